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

from hbl_mpi.core import interrupt
from hbl_mpi.runtime.abort import abort_job
from hbl_mpi.core.atomic import WriteFailed
from hbl_mpi.run.context import RunContext
from hbl_mpi.core.errors import EXIT_FATAL, fatal_line
from hbl_mpi.runtime.faults import maybe_crash
from hbl_mpi.run.lifecycle import Ledger
from hbl_mpi.runtime.liveness import RankGone, StallRule, WorkerStalled, describe_death, process_state, stalled
from hbl_mpi.runtime.messages import (TAG_CTRL, TAG_REPORT, Assign, NodeReport, Release, SendState, Stop,
                       WorkerFatal)
from hbl_mpi.tree.policy import Source, place, poll_cap
from hbl_mpi.runtime.progress import Progress
from hbl_mpi.store.results import ResultsWriter, write_failed_line
from hbl_mpi.runtime.topology import Topology
from hbl_mpi.transfer import Backoff


class Scheduler:
    def __init__(self, ctx: RunContext, topo: Topology, comm: MPI.Comm, writer: ResultsWriter,
                 done_before: set[str] | None = None, log=print):
        self.ctx = ctx
        self.topo = topo
        self.comm = comm
        self.writer = writer
        self.log = log
        self.ledger = Ledger(ctx, writer, done_before or (), log)
        self.tree = self.ledger.tree
        self.free = list(range(len(topo.groups)))
        self.running: dict[int, tuple[str, float, Source]] = {}  # group -> (node, start, source)
        self.transfer_id = 0
        self.progress = Progress(len(ctx.plan.trained_nodes()), ctx.cfg.progress_every,
                                 already_done=len(self.ledger.done_before))
        self.busy_trace: list[tuple[float, int]] = []
        self.messages_sent = 0
        self.recorded = 0  # reports handled (fault injection: crash rank 0 after K)
        self.recent_task_s: deque[float] = deque(maxlen=32)  # node times, for policy.poll_cap
        self.watch = topo.peer_watch()  # the workers on rank 0's host
        self.stall_rule = StallRule(ctx.cfg.stall_seconds)
        self.rates: deque[float] = deque(maxlen=256)  # seconds per work unit of finished nodes
        self._kept_rows = int((~ctx.plan.holdout).sum())
        self._next_stall_check = 0.0

    # ---- sending ---------------------------------------------------------------
    def _send_group(self, group: int, msg) -> None:
        for r in self.topo.groups[group]:
            self.comm.send(msg, dest=r, tag=TAG_CTRL)
            self.messages_sent += 1

    def _dispatch(self) -> None:
        for p in place(self.tree, self.free, self.topo.group_host):
            tid = -1
            if p.source is Source.GROUP:
                tid = self.transfer_id
                self.transfer_id += 1
                parent = self.ctx.plan.nodes[p.node].parent
                self._send_group(p.source_group, SendState(parent, p.group, tid))
            start = self.ledger.start(p.node)
            self._send_group(p.group, Assign(p.node, p.source, p.source_group, tid))
            self.free.remove(p.group)
            self.running[p.group] = (p.node, start, p.source)
        for parent, group in self.ledger.releasable():
            self._send_group(group, Release(parent))
        self.busy_trace.append((self.ledger.now(), len(self.running)))

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
            self._check_stall()
            backoff.sleep()
        return self.comm.recv(source=status.Get_source(), tag=TAG_REPORT)

    def _record(self, rep: NodeReport) -> None:
        node, start, source = self.running.pop(rep.group)
        if node != rep.node:
            raise RuntimeError(f"protocol error: group {rep.group} reported {rep.node}, was running {node}")
        self.free.append(rep.group)
        self.free.sort()
        stop = self.ledger.finish(rep, group=rep.group, rank=self.topo.groups[rep.group][0], start=start,
                                  source=source, where=f" on group {rep.group}")
        self.recent_task_s.append(stop - start)
        if self.ledger.created:  # adaptive: a round ran and created nodes
            self.progress.total = len(self.ctx.plan.trained_nodes())
        if rep.ok:
            self.rates.append((stop - start) / self._work(rep.node))

    def _check_alive(self) -> None:
        for rank, who in self.watch.dead().items():
            doing = [f"node {node} (group {g})" for g, (node, _, _) in self.running.items()
                     if rank in self.topo.groups[g]]
            raise RankGone(describe_death(rank, who) + (f" while training {doing[0]}" if doing else ""))

    def _work(self, node: str) -> float:
        """Training rows x epoch budget: what a node's time is proportional to (StallRule)."""
        pn = self.ctx.plan.nodes[node]
        return float(max(1, self._kept_rows - pn.n_val_rows) * self.ctx.strategy.budget(pn.stage, self.ctx.cfg.s))

    def _check_stall(self) -> None:
        """A group silent beyond ``stall_seconds`` (liveness.StallRule) ends the job (exit 4)."""
        now = time.monotonic()
        if now < self._next_stall_check:
            return
        self._next_stall_check = now + 1.0
        running = {g: (node, start, self._work(node)) for g, (node, start, _) in self.running.items()}
        late = stalled(self.ledger.now(), running, self.stall_rule, list(self.rates))
        if late:
            s = late[0]
            ranks = self.topo.groups[s.group]
            states = {r: process_state(self.topo.procs[r]) for r in ranks if self.topo.procs}
            stopped = [r for r, st in states.items() if st in ("T", "t")]
            who = f"rank {stopped[0]}" if stopped else f"rank {ranks[0]}" + (f" (group {s.group})" if len(ranks) > 1 else "")
            why = "; its process is stopped (SIGSTOP?)" if stopped else ""
            raise WorkerStalled(f"{who} has neither reported nor answered for {s.silent_s:.0f} s while training node "
                                f"{s.node} (limit {s.limit_s:.0f} s, config key stall_seconds){why}")

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
            self.busy_trace.append((self.ledger.now(), len(self.running)))
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
    except WriteFailed as e:  # the results file kept its last good version: say what it holds
        abort_job(comm, EXIT_FATAL, fatal_line(write_failed_line(e, ctx.cfg.out, writer), rank=0))
    except interrupt.Terminated as e:  # a wall-clock limit: flush, then one line and exit 143
        _end_terminated(comm, ctx, writer, e)
    except BaseException as e:
        interrupted = isinstance(e, KeyboardInterrupt)
        cause = "interrupted" if interrupted else (str(e) if isinstance(e, WorkerStalled)
                                                   else f"{type(e).__name__}: {e}")
        print(fatal_line(cause, rank=0), file=sys.stderr, flush=True)
        try:
            writer.flush()
            print(f"hbl_mpi: results so far are in {writer.path}; rerun with --restart to continue",
                  file=sys.stderr, flush=True)
        finally:
            abort_job(comm, 130 if interrupted else EXIT_FATAL)


def _end_terminated(comm: MPI.Comm, ctx: RunContext, writer: ResultsWriter, e: BaseException) -> None:
    """SIGTERM on rank 0: write every finished node, say how many in one line, end every rank."""
    code, line = interrupt.EXIT_TERMINATED, None
    try:
        writer.flush()
        line = (f"hbl_mpi: {interrupt.what(e)}: {writer.saved_done} finished nodes are in {writer.path}; "
                "continue with run --restart and the same --out")
    except WriteFailed as err:
        code, line = EXIT_FATAL, fatal_line(write_failed_line(err, ctx.cfg.out, writer), rank=0)
    finally:
        abort_job(comm, code, line)
