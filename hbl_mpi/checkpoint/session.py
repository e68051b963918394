"""Checkpoints as a training process uses them: resume a node, write each epoch, hand a
finished parent's state on.

* ``Checkpointing`` (one per training process, ``open_checkpointing``): before a node
  trains, decide whether it resumes mid-way (its ``last`` checkpoint: verified, same
  run, started from the same parent state) or starts afresh (its old checkpoints
  cleared); while it trains, hand each epoch to the background ``AsyncCheckpointWriter``
  so training never waits for the disk (and neither does the fork to the children,
  which happens after training).
* ``final_state`` / ``parent_state_from_checkpoint``: the state a finished node passes on
  to its children (``inherit = best`` or ``last``), read back from its final checkpoint.
  Restart planning (``restart.py``) reads it the same way to decide that a damaged one
  makes the parent run again.

What a checkpoint's bookkeeping holds is exactly the trainer's ``ResumePoint``: the
history, the early-stopping counters and the best state. Every epoch's randomness is
seeded from (seed, node, epoch), so resuming at an epoch boundary reproduces the
uninterrupted node bit for bit on CPU. The best state is stored *by reference* (the
epoch whose checkpoint holds it, which the keep rule never prunes: it is ``best``)
whenever the store's ``best`` is the trainer's best epoch, and inline otherwise
(``ckpt_save_best = false``, ``min_delta > 0``, ``ckpt_skip_epochs``...): one model per
checkpoint in the usual case, not two. Which epoch the store's ``best`` names is the
store's decision (``keep.improves``), read from the ``SavePlan``, never re-derived here.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable

from hbl_mpi.train.flat_state import ModelState
from hbl_mpi.train.trainer import EpochEnd, EpochRecord, ResumePoint
from hbl_mpi.checkpoint.format import info_metadata
from hbl_mpi.checkpoint.params import CkptParams
from hbl_mpi.checkpoint.store import Checkpoint, NodeCheckpoints
from hbl_mpi.checkpoint.writer import AsyncCheckpointWriter, CheckpointWriteError

RESUME_FORMAT = "hbl_mpi.resume/1"


class CheckpointMismatch(RuntimeError):
    """A checkpoint exists but cannot be used for this node (other run, other parent, damaged...)."""


# --------------------------------------------------------------------------- reading


def _bookkeeping(ck: Checkpoint, fingerprint: str) -> dict[str, Any]:
    bk = ck.bookkeeping
    if not isinstance(bk, dict) or bk.get("format") != RESUME_FORMAT:
        raise CheckpointMismatch(f"{ck.path} was not written by the hbl_mpi trainer")
    got = info_metadata(ck.info).get("run_fingerprint")
    if got != fingerprint:
        raise CheckpointMismatch(f"{ck.path} belongs to a run with other settings or data "
                                 f"(fingerprint {got}, this run {fingerprint})")
    return bk


def _best_state(store: NodeCheckpoints, ck: Checkpoint, bk: dict[str, Any]) -> ModelState:
    """The trainer's best state recorded by checkpoint ``ck`` (inline or by reference)."""
    if isinstance(bk.get("best"), ModelState):
        return bk["best"]
    ref = bk.get("best_ref")
    if ref is None:
        raise CheckpointMismatch(f"{ck.path} records no best state")
    if int(ref) == ck.epoch:
        return ck.state
    other = store.load_epoch(int(ref))
    if other is None:
        raise CheckpointMismatch(f"{ck.path} refers to best epoch {ref}, whose checkpoint is missing or damaged")
    return other.state


def final_state(params: CkptParams, node: str, fingerprint: str, inherit: str,
                expected_checksum: str = "", epochs_run: int | None = None) -> ModelState:
    """The state finished ``node`` passes to its children, read (and verified) from its
    final checkpoint; ``CheckpointMismatch`` when no usable one holds it.

    ``inherit = best``: the best epoch's state; ``last``: the final epoch's. A damaged
    ``last`` (truncated model.pt...) makes the store fall back to an older epoch: not the
    final one, so unusable. ``expected_checksum`` (from results.h5) and ``epochs_run``
    pin the state to exactly the one the parent's row reports.
    """
    store = NodeCheckpoints(params.ckpt_directory, node, params)
    ck = store.load_last()
    if ck is None:
        raise CheckpointMismatch(f"no checkpoint of finished node {node} in {params.ckpt_directory}")
    bk = _bookkeeping(ck, fingerprint)
    if ck.fell_back or not bk.get("final"):
        raise CheckpointMismatch(f"the last checkpoint of {node} (epoch {ck.epoch}) is not its final one"
                                 + (" (the final one is damaged)" if ck.fell_back else ""))
    if epochs_run is not None and ck.epoch != int(epochs_run):
        raise CheckpointMismatch(f"the final checkpoint of {node} is epoch {ck.epoch}, "
                                 f"results.h5 says it ran {epochs_run}")
    state = ck.state if inherit == "last" else _best_state(store, ck, bk)
    if expected_checksum and state.checksum() != expected_checksum:
        raise CheckpointMismatch(f"the checkpoint of {node} holds state {state.checksum()}, "
                                 f"results.h5 says its children start from {expected_checksum}")
    return state


def parent_state_from_checkpoint(params: CkptParams, fingerprint: str, inherit: str, expected: str,
                                 parent: str) -> ModelState:
    """``final_state`` of ``parent`` for this run (``expected``: the state checksum the
    restart's planning recorded for it). The planning already verified it: a failure now
    is the disk's, and fails the child."""
    try:
        return final_state(params, parent, fingerprint, inherit, expected)
    except CheckpointMismatch as e:
        raise RuntimeError(f"restart: {e}") from None


# --------------------------------------------------------------------------- writing


def _history_lists(history) -> list[list[float]]:
    return [[int(h.epoch), float(h.loss), float(h.val_loss), float(h.seconds)] for h in history]


class NodeSession:
    """Checkpointing of one node while it trains: the trainer's ``on_epoch`` hook."""

    def __init__(self, owner: "Checkpointing", store: NodeCheckpoints, max_epochs: int, init_step: int):
        self.owner = owner
        self.store = store
        self.max_epochs = max_epochs
        self.init_step = init_step
        self.resume: ResumePoint | None = None  # when the node continues from a checkpoint
        self.resumed_from = 0  # epoch resumed after (0: from the start)
        self._best: tuple[int, ModelState] | None = None  # cached private copy of the best state
        self.submitted = 0

    def on_epoch(self, ev: EpochEnd) -> None:
        last = ev.history[-1]
        metrics = {"loss": float(last.loss), "val_loss": float(last.val_loss)}
        if not self.store.wants(ev.epoch, metrics, ev.will_stop):
            return
        state = ev.state()  # a private copy: the writer reads it while training goes on
        plan = self.store.decide(ev.epoch, metrics, ev.will_stop)
        if ev.best_epoch == ev.epoch:
            self._best = (ev.epoch, state)
        if ev.best_epoch == ev.epoch or plan.best_epoch == ev.best_epoch:
            best_ref, best = ev.best_epoch, None  # that epoch's checkpoint is (or is kept as) `best`
        else:
            if self._best is None or self._best[0] != ev.best_epoch:
                self._best = (ev.best_epoch, ModelState(ev.best.flat.clone(), ev.best.n_params, ev.best.step))
            best_ref, best = None, self._best[1]
        bookkeeping = {
            "format": RESUME_FORMAT, "start_checksum": ev.start_checksum, "init_step": self.init_step,
            "max_epochs": self.max_epochs, "history": _history_lists(ev.history),
            "best_epoch": int(ev.best_epoch), "best_val": float(ev.best_val), "wait": int(ev.wait),
            "final": bool(ev.will_stop), "best_ref": best_ref, "best": best,
        }
        self.owner.writer.enqueue(self.store, plan, state, bookkeeping)
        self.submitted += 1


class Checkpointing:
    """One per training process: the background writer and the per-node resume decision.

    ``write``: this process writes checkpoints (the leader of a data-parallel group; the
    others hold identical states). ``agree``: for a group, a collective that returns
    every rank's value, so all ranks of a group resume from the same epoch or none does.
    """

    def __init__(self, params: CkptParams, fingerprint: str, *, read: bool, write: bool = True,
                 agree: Callable[[int], list[int]] | None = None, log: Callable[[str], None] | None = None):
        self.params = params
        self.fingerprint = fingerprint
        self.write = bool(write and self.params.ckpt_enabled)
        self.read = read
        self.agree = agree
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._writer: AsyncCheckpointWriter | None = None
        self.resume_load_s = 0.0

    @property
    def active(self) -> bool:
        return self.write or self.read

    @property
    def writer(self) -> AsyncCheckpointWriter:
        if self._writer is None:
            self._writer = AsyncCheckpointWriter(max_pending=2, nice=10)
        return self._writer

    def _resume_point(self, store: NodeCheckpoints, node: str, init: ModelState, max_epochs: int):
        ck = store.load_last()
        if ck is None:
            return None
        bk = _bookkeeping(ck, self.fingerprint)
        if bk.get("start_checksum") != init.checksum():
            raise CheckpointMismatch(f"{ck.path} was trained from another initial state than this run's "
                                     f"parent state of {node}")
        if int(bk.get("max_epochs", -1)) != max_epochs or len(bk["history"]) != ck.epoch:
            raise CheckpointMismatch(f"{ck.path}: epoch budget or history does not match")
        history = [EpochRecord(int(e), float(lo), float(v), float(s)) for e, lo, v, s in bk["history"]]
        return ResumePoint(epochs_done=ck.epoch, history=history, best_epoch=int(bk["best_epoch"]),
                           best_val=float(bk["best_val"]), wait=int(bk["wait"]), state=ck.state,
                           best=_best_state(store, ck, bk))

    def begin(self, node: str, init: ModelState, max_epochs: int) -> NodeSession:
        """Resume decision for ``node`` (before training)."""
        store = NodeCheckpoints(self.params.ckpt_directory, node, self.params)
        session = NodeSession(self, store, max_epochs, int(init.step))
        t0 = time.perf_counter()
        if self.read:
            try:
                session.resume = self._resume_point(store, node, init, max_epochs)
            except CheckpointMismatch as e:
                self.log(f"[hbl_mpi] node {node}: checkpoint not used, training from the start: {e}")
                session.resume = None
        epoch = session.resume.epochs_done if session.resume is not None else 0
        if self.agree is not None and self.read:  # `read` is the same on every rank of a group
            votes = self.agree(epoch)
            if len(set(votes)) != 1:
                raise RuntimeError(f"ranks of the group disagree on resuming {node}: epochs {votes}")
        self.resume_load_s += time.perf_counter() - t0
        session.resumed_from = epoch
        if epoch:
            self.log(f"[hbl_mpi] node {node}: resuming after epoch {epoch} from its checkpoint")
        elif self.write and os.path.lexists(store.dir):
            store.clear()  # a fresh start: older checkpoints of this node must not mix in
        return session

    def hook(self, session: NodeSession) -> Callable[[EpochEnd], None] | None:
        """The trainer's ``on_epoch`` for ``session`` (None: this process writes nothing)."""
        return session.on_epoch if self.write else None

    def close(self) -> None:
        """Wait for the queued writes; a failed write is reported, not raised (the run's
        results are complete; only restartability suffers, and the message says so)."""
        if self._writer is None:
            return
        try:
            self._writer.close()
        except CheckpointWriteError as e:
            self.log(f"hbl_mpi: warning: {e}; a restart will rerun the nodes concerned")


def open_checkpointing(params: CkptParams, fingerprint: str, *, read: bool, write: bool = True,
                       agree: Callable[[int], list[int]] | None = None,
                       log: Callable[[str], None] | None = None) -> Checkpointing | None:
    """The process's ``Checkpointing``, or None when this run neither writes nor reads any
    (``read``: the restart's decision that checkpoints are read, ``RestartInfo.reads_checkpoints``)."""
    ckpts = Checkpointing(params, fingerprint, read=read, write=write, agree=agree, log=log)
    return ckpts if ckpts.active else None
