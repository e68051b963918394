"""Discrete-event simulation of hbl_mpi at Summit scale, driving the real policy code.

    python bench/simulate.py                          # 128 .. 4,608 Summit nodes x 6 GPUs, S = 5
    python bench/simulate.py --full                   # also S = 6 and 7 trees (minutes)
    python bench/simulate.py --record OUT/results.h5  # re-record bench/measured/epochs_by_stage.json
    python bench/simulate.py --results OUT/results.h5 # epochs per stage from your own run

What is real: the placement decisions and the tree bookkeeping rank 0 does per event
(``hbl_mpi.tree.policy.place`` and ``TreeState``, plus the same free-list handling as
``scheduler.py``), *timed as they run here* at each machine size; the tree; and the
measured inputs below. What is modelled: time.
  * epochs per node: drawn per stage from a measured distribution (``--results`` files,
    else ``bench/measured/epochs_by_stage.json``, recorded from a 1,364-node EXP2 run;
    deeper stages than were measured reuse the deepest measured stage, capped by the
    strategy's budget);
  * seconds per epoch on a V100: calibrated so that a trajectory with the measured mean
    epochs per stage takes the paper's best EXP2 trajectory time (Table 2: 1.46 training
    hours over 5 stages), scaled by each stage's share of training rows; a data-parallel
    group of g GPUs is assumed to train g times faster (ideal: an upper bound);
  * a fork: state bytes / ``--fork-gbps`` (bench/fork.py's host-memory figure; GPU-to-GPU
    links are faster), in-place forks are free;
  * rank 0: one server. Every report costs it ``--master-task-s`` (rank-0 CPU per task
    measured by bench/schedule.py with 3 workers: messages, bookkeeping, the policy at
    small scale) plus the CPU time the real policy and free-list code take for that event
    at this machine size (measured live, on this host), plus <= 2 % for result flushes
    (``ResultsWriter`` caps them at 1/51 of rank 0's time). Reports queue while rank 0 is
    busy, so rank 0 saturates when events arrive faster than it turns them around.
Prints a table per tree depth and, last, one JSON object. ``--plot F.png`` draws the
busy-GPU curve of the largest machine (the shape of the paper's Fig. 14).
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hbl_mpi.core.atomic import replace_text  # noqa: E402
from hbl_mpi.tree.plan import full_tree  # noqa: E402
from hbl_mpi.tree.policy import TreeState, place  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MEASURED = os.path.join(HERE, "measured", "epochs_by_stage.json")
PAPER_EXP2_TRAJECTORY_HOURS = 1.46  # Table 2 of the paper
PAPER_STATE_BYTES = 3 * 16_224_001 * 4  # Uno paper preset at Top21 widths (uno.PRESETS["paper"]), weights + Adam moments
FLUSH_SHARE = 1 / 51  # ResultsWriter.maybe_flush: interval >= 50 x the last flush's duration
BINS = 10  # utilization over time: busy fraction per tenth of the makespan


def epochs_from_results(paths: list[str]) -> dict[int, list[int]]:
    from hbl_mpi.store.results import read_results

    out: dict[int, list[int]] = {}
    for p in paths:
        nodes = read_results(p).nodes
        nodes = nodes[nodes["status"] == "done"]
        for stage, grp in nodes.groupby("stage"):
            out.setdefault(int(stage), []).extend(int(e) for e in grp["epochs_run"])
    return out


def record(path: str, out: str = MEASURED) -> dict:
    """Write the epochs-per-stage measurement of a finished run (plus what produced it)."""
    import numpy as np

    from hbl_mpi.store.results import read_results

    run = read_results(path)
    nodes, config = run.nodes, run.config
    done = nodes[nodes["status"] == "done"]
    stats_path = os.path.join(os.path.dirname(os.path.abspath(path)), "run_stats.json")
    run_stats = json.load(open(stats_path)) if os.path.exists(stats_path) else None
    by_stage = {}
    for stage, grp in done.groupby("stage"):
        by_stage[str(int(stage))] = {
            "nodes": int(len(grp)), "epochs_planned": int(grp["epochs_planned"].max()),
            "epochs_mean": float(grp["epochs_run"].mean()),
            "stopped_early": int(grp["stopped_early"].sum()),
            "train_s_median": float(np.median(grp["train_s"])),
            "train_rows_mean": float(grp["n_train_rows"].mean()),
        }
    rec = {
        "what": "epochs_run of every finished node, by stage, from one hbl_mpi run",
        "source": os.path.abspath(path),
        "config": {k: config.get(k) for k in ("data", "n", "s", "strategy", "epochs", "model", "patience",
                                              "batch_size", "seed", "threads") if k in config},
        "nodes": int(len(nodes)), "done": int(len(done)),
        "run_stats": run_stats,
        "stages": by_stage,
        "epochs_by_stage": {str(int(s)): [int(e) for e in g["epochs_run"]] for s, g in done.groupby("stage")},
    }
    os.makedirs(os.path.dirname(out), exist_ok=True)
    replace_text(out, json.dumps(rec, indent=1))
    return rec


def load_epochs(paths: list[str]) -> tuple[dict[int, list[int]], str]:
    """Epochs run per stage, from results files or the recorded measurement."""
    if paths:
        return epochs_from_results(paths), ", ".join(paths)
    with open(MEASURED) as f:
        rec = json.load(f)
    cfg = rec.get("config", {})
    what = (f"{os.path.relpath(MEASURED)} ({rec.get('done')} nodes, {cfg.get('strategy')} E={cfg.get('epochs')}, "
            f"N={cfg.get('n')} S={cfg.get('s')}, model {cfg.get('model')})")
    return {int(k): v for k, v in rec["epochs_by_stage"].items()}, what


def stage_rows(n: int, stage: int) -> float:
    """A stage-``stage`` node's training rows relative to a stage-1 node's."""
    return (1 - n ** -stage) / (1 - n ** -1)


class Rank0:
    """Rank 0 as a single server: events queue while it is busy."""

    def __init__(self, task_s: float):
        self.task_s = task_s
        self.free_at = 0.0
        self.busy = 0.0
        self.policy_cpu = 0.0
        self.events = 0
        self.queue_wait = 0.0

    def serve(self, arrival: float, policy_cpu: float) -> float:
        """An event arriving at ``arrival`` whose real decision code took ``policy_cpu``
        seconds here; returns when rank 0 is done with it (its messages leave then)."""
        start = max(arrival, self.free_at)
        cost = (self.task_s + policy_cpu) / (1 - FLUSH_SHARE)
        self.free_at = start + cost
        self.busy += cost
        self.policy_cpu += policy_cpu
        self.queue_wait += start - arrival
        self.events += 1
        return self.free_at


def simulate(n_machines: int, args, epochs: dict[int, list[int]], epoch_s: float, seed: int = 0,
             trace: bool = False) -> dict:
    rng = random.Random(seed)
    slots = n_machines * args.gpus_per_node - 1  # rank 0 takes one slot
    groups = slots // args.group_size
    group_host = {g: (g * args.group_size + 1) // args.gpus_per_node for g in range(groups)}
    children = full_tree(args.n, args.s)
    tree = TreeState.from_children(children)
    max_stage = max(epochs)
    budget = args.max_epochs
    free = list(range(groups))
    heap: list[tuple[float, int, str, int]] = []
    r0 = Rank0(args.master_task_s)
    fork_s = PAPER_STATE_BYTES / (args.fork_gbps * 1e9)
    per_epoch = {st: epoch_s * stage_rows(args.n, st) / args.group_size for st in range(1, args.s + 1)}
    messages, transfers, work, seq = 0, 0, 0.0, 0
    intervals: list[tuple[float, float]] = []  # (start, finish) of every task: utilization over time
    msg_times: list[tuple[float, int]] = []
    now = 0.0
    report: tuple[str, int] | None = None
    while True:
        # --- one rank-0 event: record the report (if any), decide, release: the real
        # code (as Scheduler._record and _dispatch run it), timed -------------------
        c0 = time.process_time()
        if report is not None:
            tree.mark_done(*report)
            free.append(report[1])
            free.sort()
        placed = place(tree, free, group_host)
        for p in placed:
            tree.mark_running(p.node)
            free.remove(p.group)
        released = tree.releasable()
        for parent, _g in released:
            tree.release(parent)
        cpu = time.process_time() - c0
        sent_at = r0.serve(now, cpu)
        n_msgs = args.group_size * (sum(2 if p.source == "group" else 1 for p in placed) + len(released))
        messages += n_msgs
        msg_times.append((sent_at, n_msgs))
        for p in placed:
            stage = p.node.count(".")
            e = min(rng.choice(epochs[min(stage, max_stage)]), budget(stage))
            setup = fork_s if p.source == "group" else 0.0
            transfers += p.source == "group"
            finish = sent_at + setup + e * per_epoch[stage]
            work += finish - sent_at
            intervals.append((sent_at, finish))
            seq += 1
            heapq.heappush(heap, (finish, seq, p.node, p.group))
        if not heap:
            break
        # --- the next report reaches rank 0 --------------------------------------------
        now, _, node, g = heapq.heappop(heap)
        report = (node, g)
        messages += 1
        msg_times.append((now, 1))
    if not tree.finished():
        raise RuntimeError("simulation stalled with unfinished nodes")
    makespan = max(r0.free_at, max(f for _, f in intervals))
    # busy fraction of the groups per tenth of the makespan (the shape of Fig. 14)
    edges = [makespan * i / BINS for i in range(BINS + 1)]
    util_bins = []
    for i in range(BINS):
        a, b = edges[i], edges[i + 1]
        busy = sum(max(0.0, min(f, b) - max(s, a)) for s, f in intervals)
        util_bins.append(busy / (groups * (b - a)))
    # the busiest minute of rank 0's messages
    window = 60.0
    counts: dict[int, int] = {}
    for t, k in msg_times:
        counts[int(t // window)] = counts.get(int(t // window), 0) + k
    events_per_s = r0.events / makespan
    return {
        "summit_nodes": n_machines, "gpus": slots + 1, "groups": groups, "s": args.s,
        "tree_nodes": len(tree.status), "makespan_h": makespan / 3600, "transfers": transfers,
        "gpu_utilization": work / (groups * makespan), "utilization_over_time": util_bins,
        "peak_busy_groups": max_concurrency(intervals),
        "rank0_utilization": r0.busy / makespan, "rank0_msgs_per_s": messages / makespan,
        "rank0_peak_msgs_per_s": max(counts.values()) / window,
        "rank0_events_per_s": events_per_s,
        "rank0_policy_ms_per_event": 1e3 * r0.policy_cpu / max(r0.events, 1),
        "rank0_mean_queue_wait_s": r0.queue_wait / max(r0.events, 1),
        "timeline": intervals if trace else None,
    }


def max_concurrency(intervals: list[tuple[float, float]]) -> int:
    ev = sorted([(s, 1) for s, _ in intervals] + [(f, -1) for _, f in intervals])
    best = cur = 0
    for _, d in ev:
        cur += d
        best = max(best, cur)
    return best


def parser() -> argparse.ArgumentParser:
    """The command line; with no arguments: 128 .. 4,608 Summit nodes x 6 GPUs, S = 5, EXP2 (seconds)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="128,256,512,1024,2048,4608", help="Summit node counts")
    ap.add_argument("--gpus-per-node", type=int, default=6)
    ap.add_argument("--group-size", type=int, default=1)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--s", type=int, default=5)
    ap.add_argument("--strategy", default="EXP2")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--results", nargs="*", default=[], help="results.h5 files to take epochs from")
    ap.add_argument("--record", metavar="RESULTS_H5", help=f"record {os.path.relpath(MEASURED)} from a run, then exit")
    ap.add_argument("--fork-gbps", type=float, default=6.2,
                    help="fork bandwidth, GB/s (bench/fork.py: 6.2 host-memory, huge-page buffers, this host)")
    ap.add_argument("--master-task-s", type=float, default=0.28e-3,
                    help="rank-0 CPU seconds per task at small scale (bench/schedule.py: rank-0 CPU fraction "
                         "0.33 at 1,180 empty tasks/s)")
    ap.add_argument("--time-scale", type=float, default=1.0,
                    help="multiply every task's duration (e.g. 0.01: tasks 100x shorter, to find where rank 0 saturates)")
    ap.add_argument("--plot", default=None, help="write the busy-GPU curve of the largest run here")
    ap.add_argument("--full", action="store_true", help="also simulate S = 6 and 7 trees")
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = parser()
    args = ap.parse_args(argv)
    if args.record:
        rec = record(args.record)
        print(f"recorded {MEASURED}: {rec['done']} nodes; mean epochs by stage "
              + ", ".join(f"{s}: {v['epochs_mean']:.2f}/{v['epochs_planned']}" for s, v in rec["stages"].items()))
        print(json.dumps({"recorded": MEASURED, "nodes": rec["done"],
                          "epochs_mean_by_stage": {s: v["epochs_mean"] for s, v in rec["stages"].items()}}))
        return
    from hbl_mpi.core.epochs import parse_strategy

    epochs, source = load_epochs(args.results)
    strat = parse_strategy(args.strategy, args.epochs)
    base_s = args.s

    def mean_epochs(stage: int, depth: int) -> float:
        lst = epochs[min(stage, max(epochs))]
        return sum(min(e, strat.budget(stage, depth)) for e in lst) / len(lst)

    # calibrate a stage-1 epoch: one trajectory (mean epochs per stage, weighted by row share)
    weight = sum(mean_epochs(st, base_s) * stage_rows(args.n, st) for st in range(1, base_s + 1))
    epoch_s = PAPER_EXP2_TRAJECTORY_HOURS * 3600 / weight * args.time_scale
    sizes = [int(x) for x in args.nodes.split(",")]
    rows = []
    depths = [base_s] + ([d for d in (6, 7) if d != base_s] if args.full else [])
    for depth in depths:
        args.s = depth
        args.max_epochs = lambda stage, d=depth: strat.budget(stage, d)
        for size in sizes:
            rows.append(simulate(size, args, epochs, epoch_s, trace=args.plot is not None))
    mean_task = {}
    print(f"simulated hbl_mpi on Summit-like machines ({args.gpus_per_node} GPUs/node, group size {args.group_size}, "
          f"N={args.n}, {args.strategy} E={args.epochs}); epochs per stage from {source}")
    print(f"stage-1 epoch on a V100: {epoch_s:.0f} s (calibrated to the paper's {PAPER_EXP2_TRAJECTORY_HOURS} h EXP2 "
          f"trajectory{'' if args.time_scale == 1 else f', x{args.time_scale} time scale'}); fork "
          f"{PAPER_STATE_BYTES / (args.fork_gbps * 1e9):.3f} s; rank 0 {1e3 * args.master_task_s:.2f} ms/task + policy")
    for depth in depths:
        # per group, as simulate() times it: a group of g GPUs trains g times faster
        mean_task[depth] = sum(mean_epochs(st, depth) * args.n ** st * epoch_s * stage_rows(args.n, st)
                               for st in range(1, depth + 1)) / sum(args.n ** st for st in range(1, depth + 1)) \
            / args.group_size
    print(f"{'S':>2} {'nodes':>6} {'GPUs':>6} {'tree':>6} {'makespan h':>10} {'GPU util':>8} {'peak busy':>9} "
          f"{'rank0 util':>10} {'msgs/s':>7} {'peak/s':>7} {'policy ms/ev':>12} {'r0 wait s':>9}  "
          f"busy fraction per tenth of the run")
    for r in rows:
        spark = " ".join(f"{u:.2f}" for u in r["utilization_over_time"])
        print(f"{r['s']:>2} {r['summit_nodes']:>6} {r['gpus']:>6} {r['tree_nodes']:>6} {r['makespan_h']:>10.2f} "
              f"{r['gpu_utilization']:>8.3f} {r['peak_busy_groups']:>9} {r['rank0_utilization']:>10.4f} "
              f"{r['rank0_msgs_per_s']:>7.2f} {r['rank0_peak_msgs_per_s']:>7.2f} {r['rank0_policy_ms_per_event']:>12.3f} "
              f"{r['rank0_mean_queue_wait_s']:>9.4f}  {spark}")
    # where a single rank 0 stops keeping up: it can turn around 1 / (task_s + policy(G))
    # events per second; a machine of G busy groups produces G / (mean task seconds)
    sat = []
    for r in rows:
        per_event = (args.master_task_s + r["rank0_policy_ms_per_event"] / 1e3) / (1 - FLUSH_SHARE)
        sat.append({"s": r["s"], "summit_nodes": r["summit_nodes"], "groups": r["groups"],
                    "rank0_max_events_per_s": 1 / per_event,
                    "min_mean_task_s_all_groups_busy": r["groups"] * per_event,
                    "mean_task_s": mean_task[r["s"]]})
    print("rank 0 capacity: events/s it can serve at each size, and the shortest mean task that keeps every "
          "group busy without rank 0 falling behind (simulated mean task in brackets)")
    for x in sat:
        print(f"  S={x['s']} {x['summit_nodes']:>5} nodes ({x['groups']:>6} groups): {x['rank0_max_events_per_s']:>8.0f} "
              f"events/s -> tasks must average >= {x['min_mean_task_s_all_groups_busy']:8.1f} s "
              f"[{x['mean_task_s']:.0f} s]")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(len(depths), 1, figsize=(8, 3.2 * len(depths)), squeeze=False)
        for ax, depth in zip(axes[:, 0], depths):
            for r in (r for r in rows if r["s"] == depth):
                ev = sorted([(s, 1) for s, _ in r["timeline"]] + [(f, -1) for _, f in r["timeline"]])
                xs, ys, cur = [0.0], [0.0], 0
                for t, d in ev:
                    cur += d
                    xs.append(t / 3600)
                    ys.append(cur / r["groups"])
                ax.step(xs, ys, where="post", lw=0.8, label=f"{r['summit_nodes']} nodes")
            ax.set_ylabel("busy fraction of GPUs")
            ax.set_title(f"Simulated load, N={args.n}, S={depth} ({len(full_tree(args.n, depth)) - 1} nodes), "
                         f"{args.strategy}")
            ax.set_ylim(0, 1.05)
            ax.legend(fontsize=7, loc="upper right")
        axes[-1, 0].set_xlabel("time (hours)")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
    res = {"epoch_s_v100": epoch_s, "fork_s": PAPER_STATE_BYTES / (args.fork_gbps * 1e9),
           "master_task_s": args.master_task_s, "epochs_source": source,
           "runs": [{k: v for k, v in r.items() if k != "timeline"} for r in rows], "rank0_capacity": sat}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
