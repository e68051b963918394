"""``AsyncCheckpointWriter``: one background thread per process writes the checkpoints.

Training (and the fork to a child, which happens after training) never waits for the
disk: the decision to write an epoch is taken on the training thread (``NodeCheckpoints
.decide``), the write itself runs here, and an error of the thread is kept and raised by
the next call, never lost.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from dataclasses import dataclass
from typing import Any

from hbl_mpi.core.atomic import is_disk_full
from hbl_mpi.train.flat_state import ModelState
from hbl_mpi.checkpoint.format import copy_bookkeeping
from hbl_mpi.checkpoint.store import NodeCheckpoints, SavePlan


class CheckpointWriteError(RuntimeError):
    """A background checkpoint write failed; raised on the next submit/flush/close.

    ``disk_full``: the cause was a full disk (the previous checkpoint is intact).
    """

    def __init__(self, msg: str, disk_full: bool = False):
        super().__init__(msg)
        self.disk_full = disk_full


@dataclass
class _Job:
    node: NodeCheckpoints
    plan: SavePlan
    state: ModelState
    bookkeeping: dict[str, Any]


class AsyncCheckpointWriter:
    """One background thread per process that writes checkpoints; a bounded queue.

    ``submit`` takes the decision on the calling thread and enqueues the write; it
    returns at once unless ``max_pending`` writes are already queued (then it waits for
    a slot: bounded memory, since each job holds a state copy). The thread is not a
    daemon: at interpreter exit it finishes the queued writes, then stops. Errors in the
    thread are kept and raised (``CheckpointWriteError``) by the next ``submit``,
    ``flush`` or ``close``, never dropped.
    """

    def __init__(self, max_pending: int = 2, poll_seconds: float = 1.0, nice: int = 0):
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        self._nice = nice
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_pending)
        self._errors: list[tuple[str, int, BaseException]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._poll = poll_seconds
        self.written: list[dict[str, Any]] = []  # ckpt-info of each completed write (for reports)
        self._thread = threading.Thread(target=self._run, name="hbl-ckpt-writer", daemon=False)
        self._thread.start()

    def _lower_priority(self) -> None:
        """Nice this thread only (Linux: a TID names one thread): where every core trains,
        the writer takes CPU from training only when nothing else wants it."""
        if self._nice > 0 and sys.platform.startswith("linux"):
            try:
                tid = threading.get_native_id()
                os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + self._nice)
            except (OSError, AttributeError):
                pass

    def _run(self) -> None:
        self._lower_priority()
        main = threading.main_thread()
        while True:
            try:
                job = self._queue.get(timeout=self._poll)
            except queue.Empty:
                if self._closed or not main.is_alive():
                    return
                continue
            try:
                if job is None:
                    return
                info = job.node.write(job.plan, job.state, job.bookkeeping)
                with self._lock:
                    self.written.append(info)
            except Exception as e:  # kept for the caller, never lost
                with self._lock:
                    self._errors.append((job.node.node, job.plan.epoch, e))
            finally:
                self._queue.task_done()

    def _raise_errors(self) -> None:
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            full = any(is_disk_full(x) for _, _, x in errors)
            msg = "; ".join(f"node {n} epoch {e}: {type(x).__name__}: {x}" for n, e, x in errors)
            keep = " (disk full; each node's previous checkpoint is intact)" if full else ""
            raise CheckpointWriteError(f"checkpoint write failed{keep}: {msg}", disk_full=full) from errors[0][2]

    def submit(self, node_ckpts: NodeCheckpoints, epoch: int, state_snapshot: ModelState,
               bookkeeping: dict[str, Any], metrics: dict[str, float], final: bool = False) -> SavePlan | None:
        """Queue the write of ``epoch`` if the keep/save policy wants it; returns the plan or None.

        ``state_snapshot`` must already be a private copy (``TrainState.snapshot()``,
        i.e. a clone): the writer reads it later, while training goes on. The same holds
        for tensors inside ``bookkeeping``; its containers are copied here. Use
        ``node_ckpts.wants(...)`` first to avoid cloning for an epoch that is not written.
        """
        self._usable()
        bk = copy_bookkeeping(bookkeeping)
        plan = node_ckpts.decide(epoch, metrics, final)
        if plan is None:
            return None
        self._queue.put(_Job(node_ckpts, plan, state_snapshot, bk))
        return plan

    def enqueue(self, node_ckpts: NodeCheckpoints, plan: SavePlan, state_snapshot: ModelState,
                bookkeeping: dict[str, Any]) -> None:
        """Queue the write of an epoch already decided (``node_ckpts.decide``): for a caller
        whose bookkeeping depends on the decision (which epoch ``best`` names)."""
        self._usable()
        self._queue.put(_Job(node_ckpts, plan, state_snapshot, copy_bookkeeping(bookkeeping)))

    def _usable(self) -> None:
        self._raise_errors()
        if self._closed:
            raise RuntimeError("AsyncCheckpointWriter is closed")
        if not self._thread.is_alive():
            raise CheckpointWriteError("checkpoint writer thread is not running")

    @property
    def pending(self) -> int:
        return self._queue.unfinished_tasks

    def flush(self) -> None:
        """Wait until every submitted write is on disk; raise any write error."""
        self._queue.join()
        self._raise_errors()

    def close(self) -> None:
        """Flush, stop the thread, raise any write error. Idempotent."""
        if not self._closed:
            self._queue.join()
            self._closed = True
            self._queue.put(None)
            self._thread.join()
        self._raise_errors()

    def __enter__(self) -> "AsyncCheckpointWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
