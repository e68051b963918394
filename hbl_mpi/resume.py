"""Restart: per-epoch checkpoints of every node, and continuing a killed run from them.

Both drivers (``serial.py`` and the MPI scheduler/worker) use the same three pieces:

* ``plan_restart`` (rank 0, before any training): which finished nodes are skipped, which
  must run again because an unfinished child needs their state and no usable checkpoint
  holds it, which parents hand their state over from a checkpoint.
* ``Checkpointing`` (one per training process): before a node trains, decide whether it
  resumes mid-way (its ``last`` checkpoint: verified, same run, started from the same
  parent state) or starts afresh (its old checkpoints cleared); while it trains, hand
  each epoch to the background ``AsyncCheckpointWriter`` so training never waits for
  the disk (and neither does the fork to the children, which happens after training).
* ``parent_state_from_checkpoint``: the state a finished node passes on to its children
  (``inherit = best`` or ``last``), read back from its final checkpoint.

What a checkpoint's bookkeeping holds is exactly the trainer's ``ResumePoint``: the
history, the early-stopping counters and the best state. Every epoch's randomness is
seeded from (seed, node, epoch), so resuming at an epoch boundary reproduces the
uninterrupted node bit for bit on CPU. The best state is stored *by reference* (the
epoch whose checkpoint holds it, which the keep policy never prunes: it is ``best``)
whenever the checkpoint store's ``best`` is the trainer's best epoch, and inline
otherwise (``ckpt_save_best = false``, ``min_delta > 0``, ``ckpt_skip_epochs``...): one
model per checkpoint in the usual case, not two.

Without checkpoints (``ckpt_enabled = false`` or ``ckpt_restart_mode = off``) a restart
still skips every finished node whose state nobody needs, but a finished node with
unfinished children is run again (and with it any finished ancestor whose state is
needed): its state exists nowhere else. On CPU the rerun gives the same numbers; the
restart says how many nodes it reruns and why.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .checkpoint import AsyncCheckpointWriter, Checkpoint, CheckpointWriteError, CkptParams, NodeCheckpoints, restart_check
from .errors import InputError
from .plan import node_sort_key, stage_of
from .state import ModelState

RESUME_FORMAT = "hbl_mpi.resume/1"

#: Config keys that change what a node computes: a checkpoint (or a results file) made
#: with other values cannot be continued. ``threads``/``device`` change only rounding.
TRAINING_KEYS = ("n", "s", "order", "seed", "partition", "holdout_fraction", "model", "strategy",
                 "epochs", "inherit", "patience", "min_delta", "batch_size", "learning_rate", "dropout")


def run_fingerprint(cfg, data_checksum: str) -> str:
    """16 hex digits identifying what the nodes of this run compute (config + data)."""
    blob = json.dumps({"config": {k: getattr(cfg, k) for k in TRAINING_KEYS}, "data": data_checksum},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def ckpt_params(cfg, data_checksum: str, fingerprint: str) -> CkptParams:
    """The run's checkpoint parameters; every ckpt-info.json carries the fingerprint."""
    return CkptParams.from_config(cfg, {"data_checksum": data_checksum, "run_fingerprint": fingerprint})


def info_metadata(info: dict[str, Any] | None) -> dict[str, Any]:
    """ckpt-info.json's MoDaC-style attribute/value list as a dict."""
    if not info:
        return {}
    return {m.get("attribute"): m.get("value") for m in info.get("metadata") or [] if isinstance(m, dict)}


# --------------------------------------------------------------------------- planning


@dataclass
class RestartInfo:
    """What rank 0 decided about a run before training (plain data, broadcast to workers).

    ``restart`` is False for a fresh run (then only ``mode``/``fingerprint`` matter: the
    workers write checkpoints stamped with the fingerprint and never read old ones).
    """

    restart: bool
    mode: str  # ckpt_restart_mode
    fingerprint: str
    data_checksum: str = ""
    done: set[str] = field(default_factory=set)  # finished nodes: not run again
    rerun: list[str] = field(default_factory=list)  # finished, but their state is needed and lost
    parents_from_ckpt: dict[str, str] = field(default_factory=dict)  # parent -> inherit checksum
    resumable: dict[str, int] = field(default_factory=dict)  # unfinished node -> epoch of `last`
    foreign: list[str] = field(default_factory=list)  # checkpoints of another run (ignored)
    seconds: float = 0.0  # time spent deciding

    @property
    def reads_checkpoints(self) -> bool:
        return self.restart and self.mode != "off"

    def summary(self, total: int) -> list[str]:
        """Lines for the log: what the restart skips, reruns and resumes."""
        if not self.restart:
            return []
        out = [f"restart: {len(self.done)} of {total} nodes finished before and skipped; "
               f"{len(self.parents_from_ckpt)} pass their state on from a checkpoint; "
               f"{len(self.resumable)} unfinished nodes resume from their last epoch checkpoint "
               f"(decided in {self.seconds:.2f} s)"]
        if self.rerun:
            why = ("checkpoints are off for this restart (ckpt_restart_mode = off)" if self.mode == "off"
                   else "no usable final checkpoint holds their state")
            shown = ", ".join(self.rerun[:8]) + (" ..." if len(self.rerun) > 8 else "")
            out.append(f"restart: {len(self.rerun)} finished nodes run again because unfinished children "
                       f"need their state and {why}: {shown}")
        if self.foreign:
            out.append(f"restart: ignoring checkpoints of {len(self.foreign)} nodes made by a run with "
                       "other settings or data")
        return out


def _usable_final(store: NodeCheckpoints, fingerprint: str, epochs_run: int | None) -> bool:
    """Cheap test (no model read) that ``store``'s ``last`` is this run's final checkpoint."""
    info = store.peek_last()
    if info is None or not info.get("final"):
        return False
    if info_metadata(info).get("run_fingerprint") != fingerprint:
        return False
    return epochs_run is None or int(info.get("epoch", -1)) == int(epochs_run)


def plan_restart(plan, previous, params: CkptParams, fingerprint: str, restart: bool,
                 data_checksum: str = "") -> RestartInfo:
    """Decide a restart on rank 0 (cheap: reads ckpt-info files, never a model).

    ``previous`` is the earlier run's ``FinishedRun`` (or None when it never flushed a
    results file). Finished nodes are skipped unless an unfinished child needs their
    state and their final checkpoint is missing (killed before the background writer
    got to it, checkpoints disabled, ``ckpt_restart_mode = off``): those run again, which
    may in turn need their own parent's state, up to the root. Raises ``InputError`` for
    ``ckpt_restart_mode = required`` when there is no checkpoint at all.
    """
    t0 = time.perf_counter()
    info = RestartInfo(restart=restart, mode=params.ckpt_restart_mode, fingerprint=fingerprint,
                       data_checksum=data_checksum)
    if not restart:
        return info
    trained = set(plan.trained_nodes())
    done = (previous.done_nodes() & trained) if previous is not None else set()
    rows = {}
    if previous is not None and len(previous.nodes):
        rows = previous.nodes.drop_duplicates("node", keep="last").set_index("node")
    found = restart_check(params)  # {} when off; InputError when required and none
    root = params.ckpt_directory
    stores = {n: NodeCheckpoints(root, n, params) for n in found if n in trained}
    info.foreign = sorted(n for n, s in stores.items()
                          if info_metadata(s.peek_last()).get("run_fingerprint") != fingerprint)
    if params.ckpt_restart_mode == "required" and not set(stores) - set(info.foreign):
        raise InputError(f"ckpt_restart_mode = required but the checkpoints in {root} were made by a run "
                         "with other settings or data")

    def needed(p: str) -> bool:  # (an adaptive node still undecided may get children)
        return any(c not in done for c in plan.nodes[p].children) or plan.may_grow(p)

    # Deepest stage first: whether a node's state is needed depends only on its children,
    # which are settled by then (a rerun child makes its parent needed), so one pass does.
    for p in sorted(done, key=lambda n: (-stage_of(n), node_sort_key(n))):
        if not needed(p):
            continue
        runs = int(rows.loc[p, "epochs_run"]) if p in rows.index else None
        if p in stores and p not in info.foreign and _usable_final(stores[p], fingerprint, runs):
            info.parents_from_ckpt[p] = str(rows.loc[p, "inherit_checksum"]) if p in rows.index else ""
        else:
            done.discard(p)
            info.rerun.append(p)
    info.done = done
    info.rerun = sorted(set(info.rerun), key=node_sort_key)
    info.resumable = {n: e for n, e in sorted(found.items(), key=lambda kv: node_sort_key(kv[0]))
                      if n in trained and n not in done and n not in info.foreign}
    info.seconds = time.perf_counter() - t0
    return info


def drop_rerun(previous, rerun):
    """The previous results without the nodes that run again (no duplicate rows)."""
    if previous is None or not rerun:
        return previous
    from .results import FinishedRun

    keep = ~previous.nodes["node"].isin(list(rerun))
    return FinishedRun(previous.nodes[keep], previous.history[~previous.history["node"].isin(list(rerun))],
                       previous.cell_val[~previous.cell_val["node"].isin(list(rerun))], previous.config)


# --------------------------------------------------------------------------- reading


class CheckpointMismatch(RuntimeError):
    """A checkpoint exists but cannot be used for this node (other run, other parent...)."""


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


def parent_state_from_checkpoint(ctx, parent: str) -> ModelState:
    """The state finished node ``parent`` passes to its children, from its final checkpoint.

    ``inherit = best``: the best epoch's state; ``last``: the final epoch's. When rank 0
    knows the state's checksum from the results file, it is checked: the child starts
    from exactly the state its parent's row reports.
    """
    params = ctx.ckpt_params
    store = NodeCheckpoints(params.ckpt_directory, parent, params)
    ck = store.load_last()
    if ck is None:
        raise RuntimeError(f"restart: no checkpoint of finished node {parent} in {params.ckpt_directory}")
    bk = _bookkeeping(ck, ctx.fingerprint)
    if not bk.get("final"):
        raise RuntimeError(f"restart: the last checkpoint of {parent} (epoch {ck.epoch}) is not its final one")
    state = ck.state if ctx.cfg.inherit == "last" else _best_state(store, ck, bk)
    expected = ctx.run_info.parents_from_ckpt.get(parent) if ctx.run_info is not None else None
    if expected and state.checksum() != expected:
        raise RuntimeError(f"restart: the checkpoint of {parent} holds state {state.checksum()}, "
                           f"results.h5 says its children start from {expected}")
    return state.to(ctx.device)


# --------------------------------------------------------------------------- writing


def _history_lists(history) -> list[list[float]]:
    return [[int(h.epoch), float(h.loss), float(h.val_loss), float(h.seconds)] for h in history]


class NodeSession:
    """Checkpointing of one node while it trains: the trainer's ``on_epoch`` hook."""

    def __init__(self, owner: "Checkpointing", store: NodeCheckpoints | None, max_epochs: int,
                 init_step: int):
        self.owner = owner
        self.store = store
        self.max_epochs = max_epochs
        self.init_step = init_step
        self.resume = None  # trainer.ResumePoint when the node continues from a checkpoint
        self.resumed_from = 0  # epoch resumed after (0: from the start)
        self._best: tuple[int, ModelState] | None = None  # cached private copy of the best state
        self.submitted = 0

    def _store_best_epoch_after(self, value: float, epoch: int) -> int | None:
        """The epoch the store's ``best`` will name after deciding ``epoch`` (its own rule)."""
        s, p = self.store, self.store.params
        if p.ckpt_save_best and value < s.best_metric:
            return epoch
        return s.best_epoch if p.ckpt_save_best else None

    def on_epoch(self, ev) -> None:
        last = ev.history[-1]
        metrics = {"loss": float(last.loss), "val_loss": float(last.val_loss)}
        if not self.store.wants(ev.epoch, metrics, ev.will_stop):
            return
        state = ev.state()  # a private copy: the writer reads it while training goes on
        if ev.best_epoch == ev.epoch:
            self._best = (ev.epoch, state)
        value = metrics[self.store.params.ckpt_save_best_metric]
        if ev.best_epoch == ev.epoch or self._store_best_epoch_after(value, ev.epoch) == ev.best_epoch:
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
        self.owner.writer.submit(self.store, ev.epoch, state, bookkeeping, metrics, final=ev.will_stop)
        self.submitted += 1


class Checkpointing:
    """One per training process: the background writer and the per-node resume decision.

    ``write``: this process writes checkpoints (the leader of a data-parallel group; the
    others hold identical states). ``agree``: for a group, a collective that returns
    every rank's value, so all ranks of a group resume from the same epoch or none does.
    """

    def __init__(self, ctx, *, write: bool = True, agree: Callable[[int], list[int]] | None = None,
                 log: Callable[[str], None] | None = None):
        self.ctx = ctx
        self.params = ctx.ckpt_params
        self.write = bool(write and self.params.ckpt_enabled)
        self.read = ctx.run_info is not None and ctx.run_info.reads_checkpoints
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
        from .trainer import EpochRecord, ResumePoint

        ck = store.load_last()
        if ck is None:
            return None
        bk = _bookkeeping(ck, self.ctx.fingerprint)
        if bk.get("start_checksum") != init.checksum():
            raise CheckpointMismatch(f"{ck.path} was trained from another initial state than this run's "
                                     f"parent state of {node}")
        if int(bk.get("max_epochs", -1)) != max_epochs or len(bk["history"]) != ck.epoch:
            raise CheckpointMismatch(f"{ck.path}: epoch budget or history does not match")
        history = [EpochRecord(int(e), float(lo), float(v), float(s)) for e, lo, v, s in bk["history"]]
        return ResumePoint(epochs_done=ck.epoch, history=history, best_epoch=int(bk["best_epoch"]),
                           best_val=float(bk["best_val"]), wait=int(bk["wait"]), state=ck.state,
                           best=_best_state(store, ck, bk))

    def begin(self, node: str, init: ModelState, max_epochs: int) -> NodeSession | None:
        """Resume decision for ``node`` (before training); None when checkpoints are off."""
        if not self.active:
            return None
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

    def hook(self, session: NodeSession | None):
        """The trainer's ``on_epoch`` for ``session`` (None: nothing to write)."""
        return session.on_epoch if session is not None and self.write else None

    def close(self) -> None:
        """Wait for the queued writes; a failed write is reported, not raised (the run's
        results are complete; only restartability suffers, and the message says so)."""
        if self._writer is None:
            return
        try:
            self._writer.close()
        except CheckpointWriteError as e:
            self.log(f"hbl_mpi: warning: {e}; a restart will rerun the nodes concerned")

