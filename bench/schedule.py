"""Scheduler throughput and makespan on the 1,364-node tree (N = 4, S = 5).

    mpiexec -n 4 python bench/schedule.py          # default size (< 2 min on 2 cores)
    mpiexec -n 4 python bench/schedule.py --full   # longer synthetic tasks

Three measurements, each in this one run:
1. empty tasks through hbl_mpi's real scheduler and worker mechanism (``Scheduler``,
   ``Worker``: control messages, forks of a small held state by Isend/Irecv, releases)
   -> tasks/s;
2. the same DAG of empty tasks through ``mpi4py.futures.MPICommExecutor`` (children
   submitted when the parent's future completes) -> tasks/s;
3. synthetic task times (sleeps drawn per stage, seeded) through hbl_mpi: makespan
   against the DAG's lower bound max(critical path, total work / workers), and the
   workers' busy fraction.
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
from mpi4py import MPI

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hbl_mpi.core.config import RunConfig  # noqa: E402
from hbl_mpi.run.context import RunContext  # noqa: E402
from hbl_mpi.data.dataset import CELL, Dataset, FeatureGroup  # noqa: E402
from hbl_mpi.runtime.messages import TAG_REPORT, Assign, NodeReport  # noqa: E402
from hbl_mpi.tree.plan import PlanSpec, build_plan, parent_of  # noqa: E402
from hbl_mpi.store.results import ResultsWriter  # noqa: E402
from hbl_mpi.scheduler import Scheduler  # noqa: E402
from hbl_mpi.train.flat_state import ModelState  # noqa: E402
from hbl_mpi.runtime.topology import build_topology  # noqa: E402
from hbl_mpi.worker import Worker  # noqa: E402

import benchkit  # noqa: E402

RANKS = 4  # rank 0 schedules, 3 workers (BENCHMARKS.md's figures)

STATE_FLOATS = 3 * 1000  # a small held state: the forks are real, their size is not the point


def tree_dataset(n_cells: int) -> Dataset:
    ids = np.array([f"C{i:05d}" for i in range(n_cells)], dtype=object)
    return Dataset(cell_ids=ids, drug_ids=np.array(["D1"], dtype=object),
                   groups=[FeatureGroup("cell.x", CELL, ["x"], np.zeros((n_cells, 1), np.float32))],
                   cell_index=np.arange(n_cells, dtype=np.int32), drug_index=np.zeros(n_cells, np.int32),
                   label=np.zeros(n_cells, np.float32))


def task_seconds(node: str, scale: float) -> float:
    """Deterministic synthetic duration: longer at stage 1, shorter deeper (like EXP2)."""
    if scale <= 0:
        return 0.0
    stage = node.count(".")
    u = int(hashlib.sha256(node.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return scale * (0.5 + u) * max(1.0, 4.0 / stage)


class SyntheticWorker(Worker):
    """The real worker mechanism with the training replaced by a sleep."""

    scale = 0.0

    def _run_node(self, msg: Assign) -> None:
        runner = self.runner  # the real initial-state step (lifecycle.NodeRunner) on a small buffer
        if runner._train_state is None:
            runner._train_state = type("Flat", (), {"flat": torch.zeros(STATE_FLOATS)})()
        if msg.source != "fresh":  # a fresh task needs no state (no model is built here)
            runner.initial_state(msg.node, msg.source, receive=lambda ts: self._receive(msg, ts))
        t = task_seconds(msg.node, self.scale)
        end = time.perf_counter() + t
        while time.perf_counter() < end:  # "training": sleep in slices, serve forks
            time.sleep(min(0.002, max(0.0, end - time.perf_counter())))
            self.poll()
        if self.ctx.has_children(msg.node):
            self.outgoing.hold(msg.node, ModelState(torch.zeros(STATE_FLOATS), STATE_FLOATS // 3, 0))
        row = {"epochs_run": 0, "train_s": t}
        self.comm.send(NodeReport(msg.node, True, payload={"row": row, "history": [],
                                                           "tables": {"cell_val": (np.zeros(0, np.int64),) * 3}},
                                  group=self.topo.group),
                       dest=0, tag=TAG_REPORT)


def run_hbl(ctx, topo, comm, scale: float, out_dir: str) -> dict | None:
    if comm.Get_rank() == 0:
        writer = ResultsWriter(os.path.join(out_dir, "bench.h5"), config={}, versions={}, data_checksum="",
                               plan_frame=ctx.plan.to_frame().iloc[:0], truth=None, flush_seconds=1e9)
        sched = Scheduler(ctx, topo, comm, writer, log=lambda *a: None)
        sched.progress.update = lambda *a, **k: None
        stats = sched.run()
        nodes = writer.tables()["nodes"]
        stats["busy_s"] = float(nodes["train_s"].sum())
        stats["first_start"] = float(nodes["start"].min())
        stats["last_stop"] = float(nodes["stop"].max())
        return stats
    SyntheticWorker.scale = scale
    w = SyntheticWorker(ctx, topo, comm, None)
    w.run()
    return None


def empty_task(node: str) -> str:
    return node


def run_futures(children: dict[str, list[str]], comm) -> dict | None:
    from mpi4py.futures import MPICommExecutor

    with MPICommExecutor(comm, root=0) as ex:
        if ex is None:
            return None
        t0 = time.perf_counter()
        pending = {ex.submit(empty_task, c) for c in children["1"]}
        done = 0
        from concurrent.futures import FIRST_COMPLETED, wait

        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                done += 1
                for c in children[f.result()]:
                    pending.add(ex.submit(empty_task, c))
        wall = time.perf_counter() - t0
        return {"tasks": done, "wall_s": wall}


def lower_bound(names: list[str], scale: float, workers: int) -> tuple[float, float, float]:
    dur = {n: task_seconds(n, scale) for n in names}
    path: dict[str, float] = {}
    for n in sorted(names, key=lambda x: x.count(".")):
        p = parent_of(n)
        path[n] = dur[n] + (path.get(p, 0.0))
    total = sum(dur.values())
    crit = max(path.values())
    return max(crit, total / workers), crit, total


def parser() -> argparse.ArgumentParser:
    """The command line; with no arguments: the 1,364-node tree (N = 4, S = 5), task scale 0.1 s."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--s", type=int, default=5)
    ap.add_argument("--scale", type=float, default=0.1,
                    help="synthetic task seconds scale (mean task ~ scale; real nodes take seconds to hours)")
    ap.add_argument("--full", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    benchkit.mpiexec_self(__file__, RANKS)  # plain `python bench/schedule.py`: the documented 4-rank job
    if args.full:
        args.scale = 0.5
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if size < 2:
        print("bench/schedule.py needs >= 2 ranks: mpiexec -n 4 python bench/schedule.py", file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(1)
    ds = tree_dataset(args.n ** args.s)
    cfg = RunConfig(data="(synthetic)", n=args.n, s=args.s, holdout_fraction=0.0, progress_every=10**9)
    plan = build_plan(ds.cell_ids, ds.drug_ids, ds.cell_index, ds.drug_index,
                      PlanSpec(args.n, args.s, holdout_fraction=0.0))
    ctx = RunContext(cfg, ds, plan, torch.device("cpu"))
    topo = build_topology(comm, 1)
    out_dir = comm.bcast(tempfile.mkdtemp(prefix="hbl_sched_") if rank == 0 else None, root=0)
    names = plan.trained_nodes()

    empty = run_hbl(ctx, topo, comm, 0.0, out_dir)
    comm.Barrier()
    fut = run_futures({k: list(v.children) for k, v in plan.nodes.items()}, comm)
    comm.Barrier()
    timed = run_hbl(ctx, topo, comm, args.scale, out_dir)
    if rank == 0:
        workers = size - 1
        if args.scale <= 0:
            raise SystemExit("--scale must be > 0")
        bound, crit, total = lower_bound(names, args.scale, workers)
        makespan = timed["last_stop"]
        res = {
            "nodes": len(names), "ranks": size, "workers": workers,
            "tasks_per_s": len(names) / empty["wall_s"],
            "futures_tasks_per_s": fut["tasks"] / fut["wall_s"],
            "rank0_cpu_fraction_empty": empty["rank0_cpu_fraction"],
            "task_scale_s": args.scale, "makespan_s": makespan, "lower_bound_s": bound,
            "critical_path_s": crit, "total_work_s": total,
            "makespan_over_bound": makespan / bound,
            "busy_fraction": timed["busy_s"] / (workers * makespan),
            # worker time not spent in a task, per task: dispatch latency (rank 0's and the
            # workers' poll back-off), messages, forks; independent of task length, so it
            # says what makespan/bound becomes for real tasks (seconds to hours)
            "idle_ms_per_task": 1e3 * (workers * makespan - timed["busy_s"]) / len(names),
            "rank0_cpu_fraction_timed": timed["rank0_cpu_fraction"],
            "transfers": timed["transfers"],
        }
        print(f"scheduler benchmark: {len(names)}-node tree (N={args.n}, S={args.s}), {workers} workers")
        print(f"{'empty tasks, hbl_mpi scheduler':<40}{res['tasks_per_s']:>10.0f} tasks/s")
        print(f"{'empty tasks, mpi4py.futures':<40}{res['futures_tasks_per_s']:>10.0f} tasks/s")
        print(f"{'synthetic tasks: makespan':<40}{makespan:>10.2f} s")
        print(f"{'  lower bound max(crit, work/workers)':<40}{bound:>10.2f} s  (crit {crit:.2f}, "
              f"work/workers {total / workers:.2f})")
        print(f"{'  makespan / bound':<40}{res['makespan_over_bound']:>10.3f}")
        print(f"{'  worker busy fraction':<40}{res['busy_fraction']:>10.3f}")
        print(f"{'  worker idle per task':<40}{res['idle_ms_per_task']:>10.1f} ms")
        print(f"{'  rank 0 CPU / wall':<40}{res['rank0_cpu_fraction_timed']:>10.3f}")
        print(json.dumps(res))
        for f in os.listdir(out_dir):
            os.remove(os.path.join(out_dir, f))
        os.rmdir(out_dir)


if __name__ == "__main__":
    main()
