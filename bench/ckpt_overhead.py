"""Checkpoint overhead on node training time, and how long a restart takes to resume training.

    flock /tmp/hbl_heavy.lock python bench/ckpt_overhead.py --data demo/small.h5 --preset small
    flock /tmp/hbl_heavy.lock python bench/ckpt_overhead.py --data demo/small.h5 --preset paper \\
        --n 2 --s 1 --strategy flat:2 --reps 2

Overhead: the same serial tree trained with ``ckpt_enabled`` off and on, alternating, ``--reps``
times each; compared is the sum of the nodes' ``train_s`` (the trainer's wall time per node,
which includes the on-epoch snapshot and the hand-off to the background writer, and on a
shared CPU the writer thread's competition for cores). Every epoch is checkpointed
(``ckpt_save_interval = 1``), the default and the worst case.

Restart: a run killed (SIGKILL) mid-node right after an epoch was checkpointed, then
``--restart``; each in its own process, timed from launch to the first training step,
so the restart's extra cost (reading results.h5, scanning checkpoint info, loading and
verifying the checkpoints it resumes from) shows beside a fresh run's start-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchkit  # noqa: E402
from hbl_mpi.__main__ import main  # noqa: E402


def _run(args, out: Path, *extra: str) -> pd.DataFrame:
    code = main(["run", "--serial", "--out", str(out), *base_sets(args), *extra])
    if code != 0:
        raise SystemExit(f"run failed with exit {code}")
    return pd.read_hdf(out / "results.h5", "nodes")


def base_sets(args) -> list[str]:
    s = [f"data={args.data!r}", f"model={args.preset!r}", f"n={args.n}", f"s={args.s}",
         f"strategy={args.strategy!r}", "threads=1", f"seed={args.seed}", "flush_seconds=0.0",
         f"batch_size={args.batch_size}"]
    return [x for kv in s for x in ("--set", kv)]


def overhead(args, root: Path) -> dict:
    sums = {False: [], True: []}
    for rep in range(args.reps):
        for on in ((False, True) if rep % 2 == 0 else (True, False)):
            nodes = _run(args, root / f"ovh-{int(on)}", "--overwrite", "--set", f"ckpt_enabled={str(on).lower()}")
            sums[on].append(float(nodes["train_s"].sum()))
            print(f"  rep {rep} ckpt={on}: train_s sum {sums[on][-1]:.2f} s over {len(nodes)} nodes, "
                  f"{int(nodes['epochs_run'].sum())} epochs", flush=True)
    off, on = statistics.median(sums[False]), statistics.median(sums[True])
    ckpt = root / "ovh-1" / "ckpts"
    sizes = [p.stat().st_size for p in ckpt.rglob("model.pt")]
    return {"train_s_off": sums[False], "train_s_on": sums[True], "median_off": off, "median_on": on,
            "overhead_pct": 100.0 * (on - off) / off, "model_pt_bytes": max(sizes) if sizes else 0}


CHILD = """
import os, signal, sys, time
from hbl_mpi.run import context
from hbl_mpi.checkpoint import session
stamp, stop_node, stop_epoch = sys.argv[1], sys.argv[2], int(sys.argv[3])
original_train, original_on_epoch = context.train_node, session.NodeSession.on_epoch

def timed_train(*a, **kw):  # the name ctx.train calls
    if not os.path.exists(stamp):
        with open(stamp, "w") as f:
            f.write(repr(time.time()))
    return original_train(*a, **kw)

def on_epoch(self, ev):
    original_on_epoch(self, ev)
    if (ev.node, ev.epoch) == (stop_node, stop_epoch):
        self.owner.writer.flush()
        os.kill(os.getpid(), signal.SIGKILL)

context.train_node = timed_train
if stop_node:
    session.NodeSession.on_epoch = on_epoch
from hbl_mpi.__main__ import main
sys.exit(main(sys.argv[4:]))
"""


def restart_time(args, root: Path) -> dict:
    """Launch -> first training step, for a fresh run and for its restart (own processes)."""
    import os
    import subprocess

    out = root / "restart"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    common = ["run", "--serial", "--out", str(out), *base_sets(args), "--set", "ckpt_enabled=true"]
    times = {}
    for label, stop, extra in (("fresh", (args.stop_node, str(args.stop_epoch)), ["--overwrite"]),
                               ("restart", ("", "0"), ["--restart"])):
        stamp = root / f"{label}.stamp"
        stamp.unlink(missing_ok=True)
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-c", CHILD, str(stamp), *stop, *common, *extra],
                              capture_output=True, text=True, env=env, timeout=3600)
        if label == "restart" and proc.returncode != 0:
            raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
        times[label] = float(stamp.read_text()) - t0
        if label == "restart":
            decided = [ln for ln in proc.stdout.splitlines() if "restart:" in ln]
    nodes = pd.read_hdf(out / "results.h5", "nodes").set_index("node")
    ck = nodes["source"] == "checkpoint"
    return {"fresh_launch_to_first_training_s": times["fresh"],
            "restart_launch_to_first_training_s": times["restart"],
            "restart_log": decided, "resumed_node": args.stop_node,
            "resumed_from": int(nodes.loc[args.stop_node, "resumed_from"]),
            "checkpoint_parent_load_s": float(nodes.loc[ck, "transfer_s"].max()) if ck.any() else 0.0}


def parser() -> argparse.ArgumentParser:
    """The command line; with no arguments: demo/small.h5 (made when missing), small model, a 2 x 2 tree
    with 4 epochs per node, 3 reps, scratch folder ``<temp dir>/hbl_ckpt_overhead``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=benchkit.DEMO_DATA, help="Uno HDF5 file (default demo/small.h5, made when "
                   "missing)")
    p.add_argument("--preset", default="small")
    p.add_argument("--n", type=int, default=2)
    p.add_argument("--s", type=int, default=2)
    p.add_argument("--strategy", default="flat:4")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--stop-node", default="1.2", help="restart measurement: node to stop in")
    p.add_argument("--stop-epoch", type=int, default=2)
    p.add_argument("--root", default=benchkit.default_work("ckpt_overhead"),
                   help="scratch folder (default: <temp dir>/hbl_ckpt_overhead)")
    p.add_argument("--skip-overhead", action="store_true")
    return p


def cli(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    root = Path(args.root) / args.preset
    benchkit.say(__file__, f"work folder {root}, data {args.data}")
    args.data = benchkit.ensure_demo_data(args.data, __file__)
    root.mkdir(parents=True, exist_ok=True)
    result = {"args": vars(args)}
    if not args.skip_overhead:
        result["overhead"] = overhead(args, root)
    result["restart"] = restart_time(args, root)
    print(json.dumps(result, indent=1))
    print(json.dumps(result))  # the last line: one JSON object, as every bench script ends


if __name__ == "__main__":
    cli()
