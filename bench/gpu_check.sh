#!/usr/bin/env bash
# One GPU check: every GPU measurement the project claims, on one machine, printing one JSON
# line (the last stdout line); meant to finish in under 8 minutes on one GPU.
#
#   bench/gpu_check.sh             # on a CUDA machine: device cuda, paper sizes
#   bench/gpu_check.sh --dry-run   # the same steps at toy sizes on the CPU (tests/test_gpu_check.py)
#
# Steps (each records its own JSON, or {"error": ...} / {"skipped": ...}, and the seconds it took):
#   train_flops  epoch time at the Top21 shape (step time x steps per epoch) and FLOP/s against a
#                large matmul, for Uno paper and each shipped model (bench/train.py --flops)
#   fork         a device-to-device fork against a raw host Send of the same bytes (bench/gpu_fork.py)
#   group_ddp    a group of 2 against torch DDP over nccl, when 2 GPUs exist (bench/group.py)
#   demo_tree    the demo tree (synthetic small data, N = 4, S = 3) trained on the device
# Environment: PYTHON (default python), MPIEXEC (default: the mpiexec beside PYTHON, else on PATH).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
if [ -z "${MPIEXEC:-}" ]; then
  here=$(dirname "$(command -v "$PY")")/mpiexec
  if [ -x "$here" ]; then MPIEXEC=$here; else MPIEXEC=mpiexec; fi
fi

DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: bench/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ "$DRY" = 1 ]; then
  DEVICE=cpu GPUS=0
  FLOPS=(--flops "uno:tiny,pathway:tiny,smiles_cnn:tiny" --widths "64,32" --smiles-len 20 --batch 32 --steps 2
         --matmul-n 256 --full)
  FORK=(--device cpu --params 100000 --reps 2)
  SYNTH=(--cells 24 --drugs 8)
  TREE=(--set n=2 --set s=1 --set model=tiny --set strategy=flat:1 --set threads=1)
else
  if ! GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null) || [ "$GPUS" -lt 1 ]; then
    echo "bench/gpu_check.sh: torch sees no CUDA device (use --dry-run on a CPU machine)" >&2
    exit 2
  fi
  DEVICE=cuda
  FLOPS=(--flops "uno:paper,pathway:paper,smiles_cnn:paper" --batch 256 --steps 20 --matmul-n 8192 --full)
  FORK=(--device cuda --reps 5)
  SYNTH=()
  TREE=(--set n=4 --set s=3 --set model=small)
fi

# step NAME CMD...: run CMD, keep its last stdout line when it is JSON, else record the error
step() {
  local name=$1; shift
  local t0 t1 line
  t0=$(date +%s.%N)
  if "$@" >"$work/$name.out" 2>"$work/$name.err"; then
    line=$(tail -n 1 "$work/$name.out")
  else
    line=$(printf '{"error": "exit %s: %s"}' "$?" "$(tail -n 3 "$work/$name.err" | tr -d '\\"' | tr '\n' ' ')")
  fi
  t1=$(date +%s.%N)
  printf '%s\n' "$line" >"$work/$name.json"
  echo "$t1 - $t0" | bc -l >"$work/$name.seconds" 2>/dev/null || echo 0 >"$work/$name.seconds"
}

demo_tree() {
  "$PY" -m hbl_mpi data synth --seed 0 "${SYNTH[@]}" --out "$work/demo.h5" >/dev/null &&
  "$PY" -m hbl_mpi run --serial --set data="$work/demo.h5" --set device="$DEVICE" "${TREE[@]}" \
    --out "$work/demo" >/dev/null &&
  "$PY" - "$work/demo/results.h5" <<'PY'
import json, sys
import pandas as pd
nodes = pd.read_hdf(sys.argv[1], "nodes")
print(json.dumps({"nodes": int(len(nodes)), "done": int((nodes["status"] == "done").sum()),
                  "train_s": float(nodes["train_s"].sum())}))
PY
}

step train_flops "$PY" bench/train.py "${FLOPS[@]}"
step fork "$MPIEXEC" -n 2 "$PY" bench/gpu_fork.py "${FORK[@]}"
if [ "$GPUS" -ge 2 ]; then
  step group_ddp "$PY" bench/group.py --device cuda --presets paper --reps 1
else
  printf '{"skipped": "needs 2 GPUs, %s here"}\n' "$GPUS" >"$work/group_ddp.json"; echo 0 >"$work/group_ddp.seconds"
fi
step demo_tree demo_tree

"$PY" - "$work" "$DRY" "$DEVICE" <<'PY'
import json, os, sys
work, dry, device = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
out = {"dry_run": dry, "device": device}
for name in ("train_flops", "fork", "group_ddp", "demo_tree"):
    text = open(os.path.join(work, f"{name}.json")).read().strip()
    try:
        value = json.loads(text)
    except ValueError:
        value = {"error": f"not JSON: {text[:200]}"}
    try:
        value["step_seconds"] = round(float(open(os.path.join(work, f"{name}.seconds")).read()), 2)
    except (OSError, ValueError):
        pass
    out[name] = value
out["ok"] = not any("error" in v for v in out.values() if isinstance(v, dict))
print(json.dumps(out))
PY
