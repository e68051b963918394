"""A rank group (group_size 2) against torch DistributedDataParallel (gloo), same model and data.

    python bench/group.py                      # small and paper presets, 2 alternating reps each
    python bench/group.py --presets small --reps 1 --steps 20   # quick

Three ways to train the same Uno model on the same response rows (Top21 feature widths,
bench/train.py's data set) with the same global batch, each in fresh processes:

  ours    ``mpiexec -n 2``: both ranks run ``hbl_mpi.train.trainer.train_node`` with a
          ``grad_sync.GroupComm`` over COMM_WORLD, exactly what a group of two does in a
          run: each rank takes half of every global batch (``batch[rank::2]``), the
          gradient is reduced by bucketed non-blocking collectives posted from gradient
          hooks during backward; on the CPU (``Reduction.SHARDED``) each bucket is
          reduce-scattered, each rank runs Adam on its half and the weights are
          allgathered (``--reduction allreduce`` measures the plain ``Iallreduce`` path,
          every rank running all of Adam, as DDP does); the moments are gathered once per
          epoch (outside the per-step median, inside the epoch);
  ddp     ``torch.multiprocessing`` (2 processes, ``spawn``), gloo over TCP loopback
          (nccl with ``--device cuda``),
          ``DistributedDataParallel`` with its defaults (25 MB buckets, overlap through
          autograd hooks), ``torch.optim.Adam``; each process takes the same half of every
          global batch from the same ``DeviceTables``; the loss is scaled by the world size
          so DDP's gradient average equals our sum (same update);
  single  one process, whole batches (group_size 1; a reference, not a target).

Every process uses 1 torch thread. Time per step = the median interval between time
stamps taken right after each optimizer step (after one warm-up epoch); samples/s =
global batch / step time. The variants alternate (ours, ddp, single, ours, ...) so slow
phases of a shared host hit both sides. Last stdout line: one JSON object with
``ratio_vs_ddp`` (ours / DDP samples/s, median over reps, per preset; the top-level key
is the smallest over presets, the binding one).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import benchkit  # noqa: E402
from train import TOP21_WIDTHS, make_dataset, split_rows  # noqa: E402  (bench/train.py's data)

VARIANTS = ("ours", "ddp", "single")


def _device(args, local_rank: int) -> str:
    """``--device cuda``: one GPU per process by local rank (unmeasured here: no GPU)."""
    if args.device == "cpu":
        return "cpu"
    import torch

    idx = local_rank % torch.cuda.device_count()
    torch.cuda.set_device(idx)
    return f"cuda:{idx}"


def _data(args, device: str):
    from hbl_mpi.train.device_tables import DeviceTables

    widths = [int(w) for w in args.widths.split(",")]
    ds = make_dataset(args.rows, tuple(widths), args.seed)
    rows = split_rows(ds, args.steps * args.batch, args.batch, args.seed)
    return widths, DeviceTables.from_dataset(ds, device), rows


def _stamp(device: str, stamps: list[float]) -> None:
    if device != "cpu":
        import torch

        torch.cuda.synchronize()  # a GPU step is over when its kernels are
    stamps.append(time.perf_counter())


def _median_step(stamps: list[float]) -> float:
    return statistics.median(np.diff(stamps).tolist())


def run_ours(args) -> dict | None:
    """One rank of a group (``--world 1``: the single-process reference)."""
    import torch
    from mpi4py import MPI

    from hbl_mpi.runtime.grad_sync import GroupComm, Reduction
    from hbl_mpi.train.flat_state import TrainState
    from hbl_mpi.train.trainer import TrainSpec, train_node
    from hbl_mpi.uno import build_model, initial_state

    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    device = _device(args, comm.Get_rank())
    widths, tables, rows = _data(args, device)
    init = initial_state(widths, args.preset, args.seed, 1e-3)
    ts = TrainState(build_model(widths, args.preset), 1e-3, device)
    reduction = None if args.reduction == "auto" else Reduction(args.reduction)
    group = GroupComm(comm, reduction=reduction) if comm.Get_size() > 1 else None
    stamps: list[float] = []
    spec = TrainSpec(node="1", stage=1, max_epochs=args.epochs + 1, patience=10**6, batch_size=args.batch,
                     seed=args.seed, preset=args.preset)
    out = train_node(tables, rows, init, spec, train_state=ts, group=group,
                     poll=lambda: _stamp(device, stamps))
    spe = -(-len(rows.train) // args.batch)
    stamps = stamps[spe + 1:]  # after the warm-up epoch (one stamp per step + one per epoch end)
    step_s = _median_step(stamps)
    stats = ts.grad_sync.stats if ts.grad_sync is not None else None
    res = {"variant": "ours" if group else "single", "ranks": comm.Get_size(), "step_s": step_s,
           "samples_per_s": args.batch / step_s, "final_loss": out.history[-1].loss, "steps": out.steps}
    if stats is not None:
        res.update(buckets=len(ts.grad_sync.buckets), reduction=ts.grad_sync.reduction.value,
                   wait_ms_per_step=1e3 * stats.wait_s / stats.steps,
                   adam_ms_per_step=1e3 * stats.adam_s / stats.steps,
                   gather_ms_per_epoch=1e3 * stats.gather_s / max(1, stats.gathers),
                   posted_in_backward_fraction=stats.posted_in_backward
                   / max(1, stats.posted_in_backward + stats.posted_in_wait))
    return res if comm.Get_rank() == 0 else None


def _ddp_rank(rank: int, world: int, port: int, args) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from hbl_mpi.core.seeding import derive_seed
    from hbl_mpi.uno import build_model

    torch.set_num_threads(1)
    device = _device(args, rank)
    backend = "gloo" if device == "cpu" else "nccl"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    widths, tables, rows = _data(args, device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = build_model(widths, args.preset).to(device)
    # broadcasts rank 0's parameters; default 25 MB buckets
    ddp = DDP(model) if device == "cpu" else DDP(model, device_ids=[torch.device(device).index])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    stamps: list[float] = []
    ddp.train()
    for epoch in range(1, args.epochs + 2):
        order = rows.train[np.random.default_rng(derive_seed(args.seed, "1", epoch)).permutation(len(rows.train))]
        if epoch == 2:
            stamps.clear()
        for a in range(0, len(order), args.batch):
            batch = order[a:a + args.batch]
            xs, y = tables.gather(tables.index(batch[rank::world]))
            # DDP averages the ranks' gradients; x world makes it our sum over the global batch
            loss = (ddp(*xs) - y).square().sum() * (world / len(batch))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=False)
            _stamp(device, stamps)
    step_s = _median_step(stamps)
    if rank == 0:
        print(json.dumps({"variant": "ddp", "backend": backend, "ranks": world, "step_s": step_s,
                          "samples_per_s": args.batch / step_s}), flush=True)
    dist.destroy_process_group()


def run_ddp(args) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_rank, args=(2, port, args), nprocs=2, join=True)


def _child(variant: str, args) -> dict:
    common = ["--device", args.device, "--preset", args.preset, "--rows", str(args.rows), "--steps", str(args.steps), "--epochs",
              str(args.epochs), "--batch", str(args.batch), "--widths", args.widths, "--seed", str(args.seed), "--reduction", args.reduction]
    me = [sys.executable, os.path.abspath(__file__), "--role", variant, *common]
    if variant == "ours":
        here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
        cmd = [here if os.path.exists(here) else "mpiexec", "-n", "2", *me]
    else:
        cmd = me
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.path.join(HERE, "..") + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-2000:] + p.stderr[-4000:])
        raise SystemExit(f"bench/group.py: variant {variant} ({args.preset}) failed (exit {p.returncode})")
    return json.loads(p.stdout.strip().splitlines()[-1])


def parser() -> argparse.ArgumentParser:
    """The command line; with no arguments: small and paper presets, 2 alternating reps, 20,000 rows."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="small,paper", help="comma-separated model presets (default small,paper)")
    ap.add_argument("--reps", type=int, default=2, help="alternating repetitions per variant (median)")
    ap.add_argument("--steps", type=int, default=0, help="optimizer steps per epoch (default: small 60, paper 8)")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up epoch")
    ap.add_argument("--batch", type=int, default=256, help="global batch (each rank of a pair takes half)")
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--widths", default=",".join(map(str, TOP21_WIDTHS)))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                    help="cuda: one GPU per process, DDP on nccl (never run here: no GPU was at hand)")
    ap.add_argument("--reduction", default="auto", choices=("auto", "allreduce", "sharded"),
                    help="our group's gradient reduction (default auto: sharded on the CPU, allreduce on a GPU)")
    ap.add_argument("--preset", default="small", help=argparse.SUPPRESS)
    ap.add_argument("--role", choices=VARIANTS, help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = parser()
    args = ap.parse_args(argv)
    if args.role == "ddp":
        return run_ddp(args)
    if args.role in ("ours", "single"):
        res = run_ours(args)
        if res is not None:
            print(json.dumps(res), flush=True)
        return
    if args.rows < 2 * args.batch or args.batch < 2 or args.reps < 1 or args.epochs < 1:
        ap.error("need --rows >= 2 x --batch, --batch >= 2, --reps >= 1, --epochs >= 1")

    benchkit.say(__file__, f"presets {args.presets}, {args.reps} alternating rep(s) of ours / ddp / single, "
                           f"{args.rows:,} rows, global batch {args.batch}, each variant in fresh processes")
    per_preset = {}
    for preset in [p.strip() for p in args.presets.split(",") if p.strip()]:
        a = argparse.Namespace(**vars(args))
        a.preset = preset
        a.steps = args.steps or (8 if preset == "paper" else 60)
        runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for _ in range(args.reps):
            for v in VARIANTS:
                runs[v].append(_child(v, a))
        med = {v: statistics.median(r["samples_per_s"] for r in runs[v]) for v in VARIANTS}
        per_preset[preset] = {
            "steps_per_epoch": a.steps, "samples_per_s": med,
            "step_ms": {v: 1e3 * args.batch / med[v] for v in VARIANTS},
            "ratio_vs_ddp": med["ours"] / med["ddp"],
            "ratio_runs": [o["samples_per_s"] / d["samples_per_s"] for o, d in zip(runs["ours"], runs["ddp"])],
            "group_speedup_vs_single": med["ours"] / med["single"],
            "ddp_speedup_vs_single": med["ddp"] / med["single"],
            "ours_reduction": runs["ours"][0]["reduction"],
            "ours_wait_ms_per_step": statistics.median(r["wait_ms_per_step"] for r in runs["ours"]),
            "ours_adam_ms_per_step": statistics.median(r["adam_ms_per_step"] for r in runs["ours"]),
            "ours_gather_ms_per_epoch": statistics.median(r["gather_ms_per_epoch"] for r in runs["ours"]),
            "ours_buckets": runs["ours"][0]["buckets"],
            "ours_posted_in_backward_fraction": runs["ours"][0]["posted_in_backward_fraction"],
            "runs": runs,
        }
    print(f"group of 2 ranks vs torch DDP (gloo), global batch {args.batch}, 1 torch thread per process, "
          f"{args.rows:,} rows at widths {args.widths}, {args.reps} alternating reps (median)")
    print(f"{'preset':<8}{'variant':<8}{'samples/s':>11}{'ms/step':>10}")
    for preset, r in per_preset.items():
        for v in VARIANTS:
            print(f"{preset:<8}{v:<8}{r['samples_per_s'][v]:>11.0f}{r['step_ms'][v]:>10.1f}")
        print(f"{preset}: ours / ddp = {r['ratio_vs_ddp']:.3f} (runs {', '.join(f'{x:.3f}' for x in r['ratio_runs'])}); "
              f"group vs single {r['group_speedup_vs_single']:.2f}x, ddp vs single {r['ddp_speedup_vs_single']:.2f}x; "
              f"ours ({r['ours_reduction']}) waits {r['ours_wait_ms_per_step']:.2f} ms/step for "
              f"{r['ours_buckets']} bucket(s), its Adam share {r['ours_adam_ms_per_step']:.1f} ms/step, "
              f"the moments' gather {r['ours_gather_ms_per_epoch']:.1f} ms/epoch, "
              f"{100 * r['ours_posted_in_backward_fraction']:.0f} % posted during backward")
    out = {"device": args.device, "reduction": args.reduction, "batch": args.batch, "reps": args.reps, "rows": args.rows, "widths": args.widths,
           "ratio_vs_ddp": min(r["ratio_vs_ddp"] for r in per_preset.values()),
           "presets": {p: {k: v for k, v in r.items() if k != "runs"} for p, r in per_preset.items()},
           "runs": {p: r["runs"] for p, r in per_preset.items()}}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
