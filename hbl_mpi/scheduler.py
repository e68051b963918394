"""Rank 0: the scheduler over the node tree and the only writer of results.

Mechanism only; the decisions come from ``policy.place``. The loop:

1. ask the policy for placements of ready nodes on free groups;
2. for each placement send ``Assign`` to every rank of the target group, and — when the
   parent's state lives on another group — ``SendState`` to every rank of the holder
   (rank i sends to rank i); when all of a parent's children are placed, ``Release``;
3. wait for a ``NodeReport`` (Iprobe + sleep back-off: rank 0 must not burn a core),
   record it, flush results (rate-limited, atomic), update progress.

A worker that reports ``WorkerFatal`` (or any exception here) aborts the whole job with
a message: an MPI job must never hang. Rank 0 flushes the results before it aborts, so
the file holds every node reported until then. While it waits, rank 0 also checks that
the worker processes on its host still exist (``liveness.py``): a worker that dies
without a word under a launcher that does not end the job (``srun`` without
``--kill-on-bad-exit``) aborts the run within a second instead of hanging it.
"""

from __future__ import annotations

import sys
import time
from collections import deque

from mpi4py import MPI

from .context import RunContext
from .errors import EXIT_FATAL
from .faults import maybe_crash
from .liveness import RankGone, describe_death
from .messages import (TAG_CTRL, TAG_REPORT, Assign, NodeReport, Release, SendState, Stop,
                       WorkerFatal)
from .plan import node_sort_key
from .policy import Status, TreeState, place, poll_cap
from .growth import Growth
from .progress import Progress
from .results import ResultsWriter
from .topology import Topology
from .transfer import Backoff


class Scheduler:
    def __init__(self, ctx: RunContext, topo: Topology, comm: MPI.Comm, writer: ResultsWriter,
                 done_before: set[str] | None = None, log=print):
        self.ctx = ctx
        self.topo = topo
        self.comm = comm
        self.writer = writer
        self.log = log
        self.tree = TreeState.from_plan(ctx.plan)
        self.done_before = set(done_before or ())
        for node in sorted(self.done_before, key=node_sort_key):
            if node in self.tree.status:
                self.tree.restore_done(node)  # state not in memory: children load checkpoints
        self.free = list(range(len(topo.groups)))
        self.running: dict[int, tuple[str, float, str]] = {}  # group -> (node, start, source)
        self.transfer_id = 0
        self.t0 = time.monotonic()
        self.progress = Progress(len(ctx.plan.trained_nodes()), ctx.cfg.progress_every,
                                 already_done=len(self.done_before))
        self.busy_trace: list[tuple[float, int]] = []
        self.messages_sent = 0
        self.recorded = 0  # reports handled (fault injection: crash rank 0 after K)
        self.recent_task_s: deque[float] = deque(maxlen=32)  # node times, for policy.poll_cap
        self.watch = topo.peer_watch()  # the workers on rank 0's host
        self.growth = Growth.of(ctx, self.tree, writer, self.progress)  # adaptive: the rule grows the tree

    # ---- sending ---------------------------------------------------------------
    def _send_group(self, group: int, msg) -> None:
        for r in self.topo.groups[group]:
            self.comm.send(msg, dest=r, tag=TAG_CTRL)
            self.messages_sent += 1

    def _dispatch(self) -> None:
        for p in place(self.tree, self.free, self.topo.group_host):
            tid = -1
            if p.source == "group":
                tid = self.transfer_id
                self.transfer_id += 1
                parent = self.ctx.plan.nodes[p.node].parent
                self._send_group(p.source_group, SendState(parent, p.group, tid))
            self.tree.mark_running(p.node)
            self._send_group(p.group, Assign(p.node, p.source, p.source_group, tid))
            self.free.remove(p.group)
            self.running[p.group] = (p.node, time.monotonic() - self.t0, p.source)
        for parent, group in self.tree.releasable():
            self.tree.release(parent)
            self._send_group(group, Release(parent))
        self.busy_trace.append((time.monotonic() - self.t0, len(self.running)))

    # ---- receiving -------------------------------------------------------------
    def _wait_report(self):
        # the cap follows the node times (policy.poll_cap): a fixed 4 ms cap left every
        # worker idle 8.2 ms per task in bench/schedule.py (makespan 1.078 x the DAG bound
        # with 0.1 s tasks; 1 ms: 1.039 x), while a fixed 1 ms cap cost rank 0 5 % of the
        # demo's wall time in wake-ups on nodes of seconds (its budget is 5 %)
        backoff = Backoff(limit=poll_cap(list(self.recent_task_s)))
        status = MPI.Status()
        while not self.comm.iprobe(source=MPI.ANY_SOURCE, tag=TAG_REPORT, status=status):
            self.writer.maybe_flush()
            self._check_alive()
            backoff.sleep()
        return self.comm.recv(source=status.Get_source(), tag=TAG_REPORT)

    def _record(self, rep: NodeReport) -> None:
        node, start, source = self.running.pop(rep.group)
        if node != rep.node:
            raise RuntimeError(f"protocol error: group {rep.group} reported {rep.node}, was running {node}")
        self.free.append(rep.group)
        self.free.sort()
        stop = time.monotonic() - self.t0
        self.recent_task_s.append(stop - start)
        ctx = self.ctx
        if rep.ok:
            g = self.growth
            # the worker keeps the state of any node with children in the full tree
            self.tree.mark_done(rep.node, rep.group, may_grow=g is not None and g.may_grow(rep.node),
                                holds=None if g is None else bool(ctx.plan.candidate_children(rep.node)))
            res = rep.result
            row = ctx.node_row(rep.node, "done", group=rep.group, start=start, stop=stop, source=source,
                               **res["row"])
            cell_val = ctx.cell_val_records(res["cell_val"])
            self.writer.add(row, res["history"], cell_val)
            if g is not None:
                g.final(rep.node, "done", cell_val)
        else:
            skipped = self.tree.mark_failed(rep.node)
            self.writer.add(ctx.node_row(rep.node, "failed", group=rep.group, start=start, stop=stop,
                                         rank=self.topo.groups[rep.group][0], error=rep.error))
            for s in skipped:
                self.writer.add(ctx.node_row(s, "skipped", error=f"ancestor {rep.node} failed"))
            self.log(f"[hbl_mpi] node {rep.node} failed on group {rep.group}: {rep.error}")
            if self.growth is not None:
                for n in [rep.node] + skipped:
                    self.growth.final(n, self.tree.status[n].value)

    def _check_alive(self) -> None:
        for rank, who in self.watch.dead().items():
            doing = [f"node {node} (group {g})" for g, (node, _, _) in self.running.items()
                     if rank in self.topo.groups[g]]
            raise RankGone(describe_death(rank, who) + (f" while training {doing[0]}" if doing else ""))

    # ---- main loop -------------------------------------------------------------
    def run(self) -> dict:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        recorded = False
        while not self.tree.finished():
            self._dispatch()
            # fault injection: rank 0 dies with the next nodes handed out (workers busy)
            maybe_crash(self.ctx.cfg, self.topo.rank, self.recorded)
            if recorded:  # after re-dispatch, so "running" counts the groups actually busy
                c = self.tree.counts()
                self.progress.update(c["done"], len(self.running), c["failed"], c["skipped"])
            if not self.running:
                if self.tree.finished():
                    break
                raise RuntimeError("scheduler stalled: ready nodes but none can be placed")
            msg = self._wait_report()
            if isinstance(msg, WorkerFatal):
                raise RuntimeError(f"rank {msg.rank} failed: {msg.error}")
            self._record(msg)
            self.recorded += 1
            self.busy_trace.append((time.monotonic() - self.t0, len(self.running)))
            self.writer.maybe_flush()
            recorded = True
        c = self.tree.counts()
        self.progress.update(c["done"], len(self.running), c["failed"], c["skipped"])
        for g in range(len(self.topo.groups)):
            self._send_group(g, Stop())
        self.writer.flush()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        c = self.tree.counts()
        return {"wall_s": wall, "rank0_cpu_s": cpu, "rank0_cpu_fraction": cpu / wall if wall else 0.0,
                "counts": c, "groups": len(self.topo.groups), "transfers": self.transfer_id,
                "flushes": self.writer.flushes, "flush_s": self.writer.flush_time,
                "messages_sent": self.messages_sent}


def scheduler_main(ctx: RunContext, topo: Topology, comm: MPI.Comm, writer: ResultsWriter,
                   done_before: set[str] | None = None) -> dict:
    """Run the scheduler; any error (Ctrl-C and SystemExit too) aborts every rank, never a hang."""
    try:
        return Scheduler(ctx, topo, comm, writer, done_before).run()
    except BaseException as e:
        interrupted = isinstance(e, KeyboardInterrupt)
        cause = "interrupted" if interrupted else f"{type(e).__name__}: {e}"
        print(f"hbl_mpi: fatal: rank 0: {cause}", file=sys.stderr, flush=True)
        try:
            writer.flush()
            print(f"hbl_mpi: results so far are in {writer.path}; rerun with --restart to continue",
                  file=sys.stderr, flush=True)
        finally:
            comm.Abort(130 if interrupted else EXIT_FATAL)
