"""A worker rank: train the nodes rank 0 assigns, hold finished parents, fork them.

Loop: wait (sleeping, not spinning) for a control message from rank 0; ``Assign`` trains
a node from the fresh state, a held parent (fork in place: zero transfer) or a state
received from another group straight into the training buffer; ``SendState`` posts a
non-blocking send of a held parent; ``Release`` frees a parent once its sends are done.
While training, the trainer's ``poll`` hook serves ``SendState``/``Release`` and tests
pending sends, so a busy holder never delays the children it feeds.

With ``ckpt_enabled`` every epoch is checkpointed by a background thread (the group
leader writes), so neither training nor a fork waits for the disk; on a restart a node
resumes from its last epoch checkpoint and a ``checkpoint`` source loads a parent that
finished in an earlier run (``checkpoint/session.py``; the node's life: ``lifecycle.py``).

Every rank of a group receives the same control messages and trains in lock-step
(gradient allreduce on the group communicator); rank i of the holder group sends to
rank i of the target group, so group transfers run in parallel. Only the group leader
reports to rank 0.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import traceback

from mpi4py import MPI

from hbl_mpi.core import interrupt
from hbl_mpi.runtime.abort import abort_job
from hbl_mpi.run.context import RunContext
from hbl_mpi.core.errors import EXIT_FATAL, fatal_line
from hbl_mpi.runtime.faults import maybe_crash
from hbl_mpi.runtime.grad_sync import GroupComm
from hbl_mpi.run.lifecycle import NodeRunner
from hbl_mpi.runtime.liveness import RankGone, describe_death
from hbl_mpi.runtime.messages import (TAG_CTRL, TAG_REPORT, Assign, Release, SendState, Stop,
                       WorkerFatal)
from hbl_mpi.tree.policy import Source
from hbl_mpi.train.flat_state import ModelState, TrainState
from hbl_mpi.runtime.topology import Topology
from hbl_mpi.transfer import Backoff, OutgoingStates, recv_state_into


class Worker:
    def __init__(self, ctx: RunContext, topo: Topology, comm: MPI.Comm, group_comm: MPI.Comm | None):
        self.ctx = ctx
        self.topo = topo
        self.comm = comm
        self.group = GroupComm(group_comm) if group_comm is not None and group_comm.Get_size() > 1 else None
        self.outgoing = OutgoingStates(comm)
        self.nodes_finished = 0
        self._busy = False
        # rank 0 on this host: if it dies and the launcher keeps the job, stop waiting for it
        self.watch = topo.peer_watch()
        # only the group leader writes (the group's ranks hold identical states); all read,
        # and agree on the epoch they resume from
        agree = (lambda epoch: group_comm.allgather(epoch)) if self.group is not None else None
        say = (lambda m: print(f"{m} (rank {topo.rank})", flush=True)) if topo.is_leader else (lambda m: None)
        self.runner = NodeRunner(ctx, self.outgoing,
                                 checkpoints=ctx.open_checkpointing(write=topo.is_leader, agree=agree, log=say),
                                 group=self.group, poll=self.poll, rank=topo.rank)

    # ---- control messages ------------------------------------------------------
    def _handle(self, msg) -> bool:
        """Handle a control message; returns False on Stop."""
        if isinstance(msg, SendState):
            dest = self.topo.groups[msg.dest_group][self.topo.index_in_group]
            self.outgoing.send(msg.node, dest, msg.transfer_id)
        elif isinstance(msg, Release):
            self.outgoing.release(msg.node)
        elif isinstance(msg, Assign):
            if self._busy:
                raise RuntimeError(f"protocol error: assigned {msg.node} while training")
            self._run_node(msg)
        elif isinstance(msg, Stop):
            return False
        else:
            raise RuntimeError(f"protocol error: unexpected message {msg!r}")
        return True

    def poll(self) -> None:
        """Called by the trainer between steps: serve forks, drive pending sends, and notice
        a dead rank 0 (a node may train for hours: it must not outlive the scheduler)."""
        self._check_rank0()
        while self.comm.iprobe(source=0, tag=TAG_CTRL):
            self._handle(self.comm.recv(source=0, tag=TAG_CTRL))
        if self.outgoing.held:
            self.outgoing.progress()

    def run(self) -> None:
        backoff = Backoff()
        while True:
            if self.comm.iprobe(source=0, tag=TAG_CTRL):
                if not self._handle(self.comm.recv(source=0, tag=TAG_CTRL)):
                    break
                backoff.reset()
                continue
            self.outgoing.progress()
            self._check_rank0()
            backoff.sleep()
        self.outgoing.drain()
        self.runner.close()

    def _check_rank0(self) -> None:
        """RankGone when rank 0's process (watched when on this host) has died; cheap: the
        watch looks at /proc at most once a second."""
        for rank, who in self.watch.dead().items():
            raise RankGone(describe_death(rank, who) + " (rank 0 is the scheduler)")

    # ---- one node ------------------------------------------------------------
    def _receive(self, msg: Assign, ts: TrainState) -> ModelState:
        """The parent's state from rank i of the holder group, straight into the buffer."""
        src = self.topo.groups[msg.source_group][self.topo.index_in_group]
        n_params, step = recv_state_into(self.comm, ts.flat, src, msg.transfer_id, poll=self.poll)
        return ModelState(ts.flat, n_params, step)

    def _run_node(self, msg: Assign) -> None:
        self._busy = True
        try:
            receive = (lambda ts: self._receive(msg, ts)) if msg.source is Source.GROUP else None
            result = self.runner.run(msg.node, msg.source, receive)
        finally:
            self._busy = False
        if self.topo.is_leader:
            report = dataclasses.replace(result, group=self.topo.group)
            self.comm.send(report, dest=0, tag=TAG_REPORT)
        self.nodes_finished += 1
        maybe_crash(self.ctx.cfg, self.topo.rank, self.nodes_finished)


FATAL_GRACE_S = 10.0
"""How long a failing worker lets rank 0 flush the results and abort the job itself
before it aborts the job on its own (rank 0 may be mid-flush, or gone)."""


def worker_main(ctx: RunContext, topo: Topology, comm: MPI.Comm, group_comm) -> None:
    """Run the worker loop; any error outside node work aborts the whole job.

    ``BaseException``, not ``Exception``: a ``SystemExit`` (``sys.exit`` in a library) or a
    ``KeyboardInterrupt`` that let this rank return and finalize MPI would leave rank 0
    waiting for its report forever, and mpiexec waits for rank 0.
    """
    try:
        Worker(ctx, topo, comm, group_comm).run()
    except BaseException as e:
        # Ctrl-C reaches every rank: rank 0 says "interrupted" once for the job, a worker
        # only tells rank 0 (which speaks for it when it alone was interrupted)
        interrupted = isinstance(e, KeyboardInterrupt)
        msg = interrupt.what(e) if interrupted else f"{type(e).__name__}: {e}"
        if not interrupted:
            print(fatal_line(msg, rank=topo.rank), file=sys.stderr, flush=True)
        try:
            if not isinstance(e, RankGone):
                if not interrupted:
                    traceback.print_exc()
                _let_rank0_abort(comm, topo, msg)
        finally:
            abort_job(comm, EXIT_FATAL)


def _let_rank0_abort(comm: MPI.Comm, topo: Topology, msg: str) -> None:
    """Tell rank 0, which flushes the results and aborts the job; wait for that, a while."""
    req = comm.isend(WorkerFatal(topo.rank, msg), dest=0, tag=TAG_REPORT)
    watch = topo.peer_watch(interval=0.5)
    deadline = time.monotonic() + FATAL_GRACE_S
    while time.monotonic() < deadline and not watch.dead():
        req.Test()  # drive the send; rank 0's Abort ends this process
        time.sleep(0.05)
