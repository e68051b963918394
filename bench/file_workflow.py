"""The whole tree against the seed's architecture: one process per node, states through files.

    python bench/file_workflow.py                         # the README demo tree (84 nodes), 4 ranks
    python bench/file_workflow.py --set s=4               # 340 nodes (N = 4, S = 4)
    python bench/file_workflow.py --set s=2 --set epochs=2 --ranks 3   # quick

The paper's workflow (CANDLE Supervisor's cp-leaveout, on Swift/T) runs every node of the
tree as its own process: it reads the data, loads its parent's model file (weights and
optimizer state), trains, and writes its own model file; a dataflow engine starts a
node's process once its parent's file exists. This script runs that baseline with the
*same* trainer, plan, config and number of processes as ``hbl_mpi run``, and then
``mpiexec -n RANKS python -m hbl_mpi run`` itself, in one run:

  dispatcher   this process (the dataflow engine, in place of rank 0): keeps
               ``RANKS - 1`` node processes running (the workers' slots), starts a node
               when its parent's process has exited successfully, largest remaining
               subtree first (the same priority as hbl_mpi's scheduler), polls every 5 ms;
  node         ``python bench/file_workflow.py --node NAME``: imports, reads the data file
               (``hbl_mpi.data.read_uno``) and builds the plan, loads the parent's state by
               ``torch.load`` of ``models/PARENT.pt`` (a stage-1 node builds the seeded
               initial state), trains with ``RunContext.train`` (the trainer every run
               uses), writes ``models/NAME.pt`` by ``torch.save`` (plain, no fsync, as the
               seed's Keras ``model.save``: the cheaper choice for the baseline).

Per node it records: process start (launch -> main, which includes the interpreter and
the imports of torch and hbl_mpi), data read, state load, training, state save, and exit
(last stamp -> the dispatcher sees the exit). Makespan: first launch -> last exit for the
file workflow; ``mpiexec`` launch -> exit for hbl_mpi (both include every process start).
CPU training is deterministic, so both must give the same val_loss per node, bit for bit:
checked and reported (``val_loss_max_abs_diff``). Last stdout line: one JSON object with
``speedup`` (file workflow makespan / hbl_mpi makespan) and ``nodes``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

T_LAUNCH = time.time()  # as early as possible: the node's process start ends here (+ imports)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
import benchkit  # noqa: E402

PHASES = ("process_start", "data_read", "state_load", "training", "state_save", "exit")


def _config(args):
    from hbl_mpi.core.config import load_config

    return load_config(args.config, args.set, args.work)


def node_main(args) -> None:
    """One node, as the seed's workflow runs it: its own process, its own reads and writes."""
    import torch  # noqa: F401  (the imports are part of a node process's start)

    from hbl_mpi.run.context import RunContext
    from hbl_mpi.data import read_uno
    from hbl_mpi.tree.plan import ROOT as PLAN_ROOT, PlanSpec, plan_for
    from hbl_mpi.train.flat_state import ModelState

    t_main = time.time()
    cfg = _config(args)
    torch.set_num_threads(cfg.threads or 1)
    ds = read_uno(cfg.data)
    plan = plan_for(ds, PlanSpec.from_config(cfg))
    ctx = RunContext(cfg, ds, plan, torch.device("cpu"))
    t_read = time.time()
    parent = plan.nodes[args.node].parent
    if parent == PLAN_ROOT:
        init = ctx.initial_state()
    else:
        saved = torch.load(os.path.join(args.work, "models", f"{parent}.pt"))
        init = ModelState(saved["flat"], saved["n_params"], saved["step"])
    t_load = time.time()
    outcome = ctx.train(args.node, init, ctx.new_train_state())
    t_train = time.time()
    st = outcome.inherit_state
    if plan.nodes[args.node].children:
        torch.save({"flat": st.flat, "n_params": st.n_params, "step": st.step},
                   os.path.join(args.work, "models", f"{args.node}.pt"))
    t_save = time.time()
    print(json.dumps({"node": args.node, "launch": args.launched, "main": t_main, "read": t_read, "load": t_load,
                      "train": t_train, "save": t_save, "val_loss": outcome.val_loss,
                      "epochs_run": outcome.epochs_run, "state_bytes": st.nbytes}), flush=True)


def _subtree_sizes(plan) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for name in sorted(plan.trained_nodes(), key=lambda n: -n.count(".")):
        sizes[name] = 1 + sum(sizes[c] for c in plan.nodes[name].children)
    return sizes


def dispatch(args, plan, slots: int) -> tuple[float, dict[str, dict]]:
    """Run every node as its own process, parents before children, ``slots`` at a time."""
    from hbl_mpi.tree.plan import ROOT as PLAN_ROOT

    os.makedirs(os.path.join(args.work, "models"), exist_ok=True)
    size = _subtree_sizes(plan)
    ready = [n for n in plan.nodes[PLAN_ROOT].children]
    running: dict[str, subprocess.Popen] = {}
    records: dict[str, dict] = {}
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    base = [sys.executable, os.path.abspath(__file__), "--work", args.work, *(["--config", args.config] if args.config else []),
            *sum((["--set", s] for s in args.set), [])]
    t0 = time.time()
    while ready or running:
        ready.sort(key=lambda n: -size[n])
        while ready and len(running) < slots:
            node = ready.pop(0)
            running[node] = subprocess.Popen([*base, "--node", node, "--launched", repr(time.time())],
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for node, p in list(running.items()):
            if p.poll() is None:
                continue
            out, err = p.communicate()
            seen = time.time()
            del running[node]
            if p.returncode != 0:
                for q in running.values():
                    q.kill()
                raise SystemExit(f"bench/file_workflow.py: node {node} failed (exit {p.returncode}):\n{err[-3000:]}")
            rec = json.loads(out.strip().splitlines()[-1])
            rec["exited"] = seen
            records[node] = rec
            ready.extend(plan.nodes[node].children)
        time.sleep(0.005)
    return time.time() - t0, records


def phases_of(rec: dict) -> dict[str, float]:
    return {"process_start": rec["main"] - rec["launch"], "data_read": rec["read"] - rec["main"],
            "state_load": rec["load"] - rec["read"], "training": rec["train"] - rec["load"],
            "state_save": rec["save"] - rec["train"], "exit": rec["exited"] - rec["save"]}


def run_ours(args, ranks: int) -> tuple[float, "object"]:
    import pandas as pd

    out = os.path.join(args.work, "ours")
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    cmd = [here if os.path.exists(here) else "mpiexec", "-n", str(ranks), sys.executable, "-m", "hbl_mpi", "run",
           *([args.config] if args.config else []), *sum((["--set", s] for s in args.set), []),
           "--out", out, "--overwrite"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.time() - t0
    if p.returncode != 0:
        raise SystemExit(f"bench/file_workflow.py: hbl_mpi run failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    return wall, pd.read_hdf(os.path.join(out, "results.h5"), "nodes").set_index("node")


def _stats(values: list[float]) -> dict:
    return {"total_s": sum(values), "median_s": statistics.median(values), "max_s": max(values)}


def parser() -> argparse.ArgumentParser:
    """The command line; with no arguments: jobs/demo.toml (84 nodes, demo/small.h5, made when missing),
    4 ranks, scratch folder ``<temp dir>/hbl_file_workflow``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=os.path.join(ROOT, "jobs", "demo.toml"), help="run config (default jobs/demo.toml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    ap.add_argument("--ranks", type=int, default=4, help="MPI ranks of hbl_mpi run; the file workflow gets "
                    "RANKS - 1 concurrent node processes and this dispatcher (default 4)")
    ap.add_argument("--work", default=benchkit.default_work("file_workflow"),
                    help="scratch folder (replaced; default: <temp dir>/hbl_file_workflow)")
    ap.add_argument("--node", help=argparse.SUPPRESS)
    ap.add_argument("--launched", type=float, help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = parser()
    args = ap.parse_args(argv)
    args.work = os.path.abspath(args.work)
    if args.node:
        return node_main(args)
    if args.ranks < 2:
        ap.error("--ranks must be >= 2 (rank 0 schedules)")
    from hbl_mpi.core.errors import InputError
    from hbl_mpi.data import read_uno
    from hbl_mpi.tree.plan import PlanSpec, plan_for

    benchkit.say(__file__, f"work folder {args.work} (replaced), config {args.config} {' '.join(args.set)}".rstrip())
    try:
        cfg = _config(args)
    except InputError as e:
        benchkit.need_first(__file__, str(e))
    benchkit.ensure_demo_data(cfg.data, __file__)
    if os.path.exists(args.work):
        shutil.rmtree(args.work)
    os.makedirs(args.work)
    plan = plan_for(read_uno(cfg.data), PlanSpec.from_config(cfg))
    n_nodes = len(plan.trained_nodes())

    ours_s, ours = run_ours(args, args.ranks)
    file_s, records = dispatch(args, plan, args.ranks - 1)
    per_node = {n: phases_of(r) for n, r in records.items()}
    phase = {k: _stats([p[k] for p in per_node.values()]) for k in PHASES}
    node_total = sum(sum(p.values()) for p in per_node.values())
    diffs = [abs(records[n]["val_loss"] - float(ours.loc[n, "val_loss"])) for n in records]
    res = {
        "nodes": n_nodes, "ranks": args.ranks, "config": args.config, "set": args.set,
        "ours_makespan_s": ours_s, "file_makespan_s": file_s, "speedup": file_s / ours_s,
        "file_phases": phase,
        "file_phase_fraction": {k: phase[k]["total_s"] / node_total for k in PHASES},
        "ours_per_node": {"training": _stats(list(ours["train_s"])), "state_transfer": _stats(list(ours["transfer_s"])),
                          "sources": {str(k): int(v) for k, v in ours["source"].value_counts().items()}},
        "val_loss_max_abs_diff": max(diffs), "val_loss_bit_identical": max(diffs) == 0.0,
        "state_bytes": max(r["state_bytes"] for r in records.values()),
        "per_node": per_node,
    }
    print(f"whole tree: {n_nodes} nodes, {args.ranks} ranks ({args.config} {' '.join(args.set)})")
    print(f"hbl_mpi run (mpiexec -n {args.ranks}): {ours_s:.1f} s launch -> exit; "
          f"file workflow (1 dispatcher + {args.ranks - 1} node processes): {file_s:.1f} s; "
          f"speedup {res['speedup']:.2f}x")
    print(f"{'file workflow, per node':<26}{'total s':>10}{'median s':>10}{'max s':>9}{'share':>8}")
    for k in PHASES:
        print(f"{k:<26}{phase[k]['total_s']:>10.1f}{phase[k]['median_s']:>10.3f}{phase[k]['max_s']:>9.3f}"
              f"{100 * res['file_phase_fraction'][k]:>7.1f}%")
    o = res["ours_per_node"]
    print(f"hbl_mpi per node: training median {o['training']['median_s']:.3f} s (total {o['training']['total_s']:.1f}), "
          f"state transfer median {o['state_transfer']['median_s'] * 1e3:.2f} ms; sources {o['sources']}")
    print(f"val_loss per node, file workflow vs hbl_mpi: max |diff| {res['val_loss_max_abs_diff']:.3g}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
