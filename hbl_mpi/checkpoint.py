"""Per-node epoch checkpoints with CANDLE's conventions, crash-atomic, written off the critical path.

Layout (one directory per tree node, CANDLE's ``ckpts/`` scheme)::

    <root>/<node>/epochs/NNN/model.pt         ModelState + the trainer's bookkeeping (torch.save)
    <root>/<node>/epochs/NNN/ckpt-info.json   epoch, metric, best metric, checksum, metadata, ...
    <root>/<node>/last -> epochs/NNN          symlink: the newest checkpoint of the node
    <root>/<node>/best -> epochs/NNN          symlink: the best checkpoint (by ckpt_save_best_metric)

Why symlinks replaced with ``os.replace`` instead of the seed's hardlinks: CANDLE's module
hardlinks *files* because a directory cannot be hardlinked, and its ``last`` is still a
symlink that it deletes and recreates (a window with no ``last``). Here a new symlink is
created under a temporary name and renamed over ``last``: rename(2) replaces the link in
one step, so at every instant ``last`` names either the old or the new epoch, never
nothing. Symlinks keep CANDLE's look (``ls -l``, ``cd last``, tools that open
``last/model.pt``) and are relative, so a checkpoint tree can be moved or copied.

Write protocol (a checkpoint is never modified in place):

1. write ``model.pt`` and ``ckpt-info.json`` into ``<node>/.tmp-*``, fsync both files and
   the directory;
2. rename the directory to ``epochs/NNN`` (if ``NNN`` already exists it is swapped in with
   renameat2(RENAME_EXCHANGE), so ``NNN`` is always one complete checkpoint), fsync
   ``epochs/``;
3. swing ``last`` to it, then ``best`` (if it is the best so far), fsync the node directory;
4. prune according to the keep policy: each doomed epoch is first renamed to ``.trash-*``
   and only then removed, so ``epochs/`` never holds a half-deleted checkpoint.

A crash at any instant therefore leaves ``last`` on a complete checkpoint (the previous
one or the new one); ``load_last`` verifies its SHA-256 (``ckpt_checksum``) and, if it
is damaged anyway (disk trouble, a hand edit), warns and falls back to the newest older
checkpoint that verifies. ``best`` is moved after ``last`` so ``best`` never points past
``last``; a ``best`` left stale by a crash between the two swaps is repaired by the next
write (the best epoch is recorded in every ``ckpt-info.json``).

One writer per node: only the process that trains a node writes its directory (readers
of finished nodes may run anywhere). Leftover ``.tmp-*``/``.trash-*`` entries of a dead
writer are removed by the node's next writer on its first write.

``AsyncCheckpointWriter`` moves the disk I/O to one background thread per process, so
training (and the fork to a child) never waits for the disk.
"""

from __future__ import annotations

import ctypes
import datetime
import errno
import hashlib
import json
import math
import os
import platform
import queue
import re
import shutil
import socket
import sys
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import InputError
from .plan import parent_of, stage_of
from .state import ModelState

FORMAT = "hbl_mpi.ckpt/1"
MODEL_FILE = "model.pt"
INFO_FILE = "ckpt-info.json"
EPOCHS_DIR = "epochs"
LAST = "last"
BEST = "best"
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_NODE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_MINIMIZE = {"val_loss", "loss"}  # metrics where lower is better (the config's choices)

#: Write steps at which the test hook ``NodeCheckpoints._step_hook`` is called, in order.
WRITE_STEPS = (
    "model_written",   # model.pt written into the temp dir (not yet fsynced)
    "info_written",    # ckpt-info.json written into the temp dir
    "fsynced",         # both files and the temp dir fsynced
    "renamed",         # temp dir renamed to epochs/NNN
    "last_swapped",    # `last` points at the new epoch
    "best_swapped",    # `best` updated (called whether or not it moved)
    "pruned_one",      # after each pruned epoch directory (only when something is pruned)
)


class CheckpointWriteError(RuntimeError):
    """A background checkpoint write failed; raised on the next submit/flush/close."""


# --------------------------------------------------------------------------- parameters


@dataclass
class CkptParams:
    """CANDLE's checkpoint hyperparameters (same names), resolved for one run.

    ``ckpt_directory`` is the resolved checkpoint root (``OUT/ckpts`` when the config
    leaves it empty). ``metadata`` is run-level metadata copied into every
    ``ckpt-info.json`` (model preset, data checksum, ...).
    """

    ckpt_restart_mode: str = "auto"
    ckpt_save_best: bool = True
    ckpt_save_best_metric: str = "val_loss"
    ckpt_skip_epochs: int = 0
    ckpt_save_interval: int = 1
    ckpt_checksum: bool = True
    ckpt_keep_mode: str = "linear"
    ckpt_keep_limit: int = 2
    ckpt_directory: str = "ckpts"
    ckpt_enabled: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ckpt_restart_mode not in ("off", "auto", "required"):
            raise InputError(
                f"ckpt_restart_mode must be one of off, auto, required; got {self.ckpt_restart_mode!r}"
            )
        if self.ckpt_keep_mode not in ("linear", "exponential"):
            raise InputError(f"ckpt_keep_mode must be linear or exponential; got {self.ckpt_keep_mode!r}")
        if self.ckpt_save_best_metric not in _MINIMIZE:
            raise InputError(
                f"ckpt_save_best_metric must be one of {', '.join(sorted(_MINIMIZE))}; "
                f"got {self.ckpt_save_best_metric!r}"
            )
        for key, lo in (("ckpt_skip_epochs", 0), ("ckpt_save_interval", 1), ("ckpt_keep_limit", 0)):
            if getattr(self, key) < lo:
                raise InputError(f"{key} must be >= {lo}; got {getattr(self, key)!r}")
        if not self.ckpt_directory:
            raise InputError("ckpt_directory is empty")

    @classmethod
    def from_config(cls, cfg, metadata: dict[str, Any] | None = None) -> "CkptParams":
        """From a ``RunConfig``; an empty ``ckpt_directory`` means ``<cfg.out>/ckpts``."""
        meta = {
            "model": cfg.model,
            "strategy": cfg.strategy,
            "inherit": cfg.inherit,
            "seed": cfg.seed,
            "n": cfg.n,
            "s": cfg.s,
        }
        meta.update(metadata or {})
        return cls(
            ckpt_restart_mode=cfg.ckpt_restart_mode,
            ckpt_save_best=cfg.ckpt_save_best,
            ckpt_save_best_metric=cfg.ckpt_save_best_metric,
            ckpt_skip_epochs=cfg.ckpt_skip_epochs,
            ckpt_save_interval=cfg.ckpt_save_interval,
            ckpt_checksum=cfg.ckpt_checksum,
            ckpt_keep_mode=cfg.ckpt_keep_mode,
            ckpt_keep_limit=cfg.ckpt_keep_limit,
            ckpt_directory=cfg.ckpt_directory or os.path.join(cfg.out, "ckpts"),
            ckpt_enabled=cfg.ckpt_enabled,
            metadata=meta,
        )


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class SavePlan:
    """The decision to write one epoch, taken on the training thread by ``decide``.

    Carries everything the write needs about best tracking, so the writer thread never
    reads the node's live (and by then newer) tracking state.
    """

    epoch: int
    metrics: dict[str, float]
    metric_name: str
    metric_value: float | None
    best_metric: float | None  # best saved metric including this epoch
    best_epoch: int | None     # epoch that `best` must point at after this write
    is_best: bool
    final: bool
    elapsed: float | None      # seconds since this store's previous checkpoint decision


@dataclass
class Checkpoint:
    """One loaded checkpoint: the state, the trainer's bookkeeping and ckpt-info.json."""

    epoch: int
    state: ModelState
    bookkeeping: dict[str, Any]
    info: dict[str, Any]
    path: Path
    fell_back: bool = False  # True when the pointed checkpoint was damaged


class _Damaged(Exception):
    pass


# --------------------------------------------------------------------------- keep policy


def _v2(e: int) -> int:
    """2-adic valuation (trailing zero bits) of a positive integer."""
    return (e & -e).bit_length() - 1


def keep_epochs(epochs, last: int, best: int | None, mode: str, limit: int) -> set[int]:
    """The epochs to keep: ``last``, ``best`` and up to ``limit`` others.

    ``linear``: the newest ``limit`` others (CANDLE). ``exponential``: one epoch per
    octave of distance back from ``last`` (distance in [1,2), [2,4), [4,8), ...), the
    most power-of-two-aligned epoch in each octave, the nearest ``limit`` octaves. The
    alignment rule makes the choice stable as ``last`` advances (an epoch that is not
    kept now would not be chosen later), so saving every epoch leaves checkpoints at
    distances 1, 2, 4, 8, ... from ``last``. Epochs after ``last`` (a stale future left
    by a crash or a rewind) are never kept.
    """
    keep = {last}
    if best is not None and best in epochs and best <= last:
        keep.add(best)
    others = [e for e in epochs if e < last and e not in keep]
    if mode == "linear":
        return keep | set(sorted(others, reverse=True)[:limit])
    buckets: dict[int, int] = {}
    for e in others:
        j = (last - e).bit_length() - 1
        cur = buckets.get(j)
        if cur is None or (_v2(e), e) > (_v2(cur), cur):
            buckets[j] = e
    return keep | {buckets[j] for j in sorted(buckets)[:limit]}


# --------------------------------------------------------------------------- file helpers


def _fsync_dir(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _HashingWriter:
    """File wrapper that hashes the bytes as torch.save writes them (no second read)."""

    def __init__(self, f, enabled: bool):
        self.f = f
        self.h = hashlib.sha256() if enabled else None
        self.n = 0

    def write(self, b) -> int:
        if self.h is not None:
            self.h.update(b)
        self.n += len(b)
        return self.f.write(b)

    def flush(self) -> None:
        self.f.flush()


def _sha256_file(path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), a)


def _json_number(x) -> float | None:
    """JSON has no NaN/inf: non-finite metrics are stored as null."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


_LEAF_TYPES = (int, float, bool, str, bytes, type(None))


def _copy_bookkeeping(obj, where: str = "bookkeeping"):
    """Structural copy of the caller's bookkeeping (containers copied, tensors shared).

    Checked on the training thread so a bad value fails at the call site. Allowed:
    dict (str keys), list, tuple, numbers, str, bool, None, torch.Tensor and ModelState
    (stored tagged, so ``torch.load(weights_only=True)`` can read it back). numpy values
    are not allowed: convert them (e.g. numpy RNG state via ``bit_generator.state``).
    """
    if isinstance(obj, ModelState):
        return {"__model_state__": True, "flat": obj.flat, "n_params": int(obj.n_params), "step": int(obj.step)}
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, _LEAF_TYPES):
        return obj
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: dict keys must be str, got {type(k).__name__} {k!r}")
            out[k] = _copy_bookkeeping(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        items = [_copy_bookkeeping(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(
        f"{where}: cannot checkpoint a {type(obj).__module__}.{type(obj).__name__}; "
        "use tensors, numbers, strings, lists, tuples, dicts or ModelState"
    )


def _for_disk(obj):
    """Tensors to CPU and compact (a view of a bigger storage would save the whole storage)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.device.type != "cpu":
            t = t.to("cpu")
        if not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.contiguous().clone()
        return t
    if isinstance(obj, dict):
        return {k: _for_disk(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_for_disk(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_for_disk(v) for v in obj)
    return obj


def _from_disk(obj):
    if isinstance(obj, dict):
        if obj.get("__model_state__") is True and set(obj) == {"__model_state__", "flat", "n_params", "step"}:
            return ModelState(obj["flat"], int(obj["n_params"]), int(obj["step"]))
        return {k: _from_disk(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_disk(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_from_disk(v) for v in obj)
    return obj


def _versions() -> dict[str, str]:
    from . import __version__

    return {
        "framework": "pytorch",
        "framework_version": torch.__version__,
        "python_version": platform.python_version(),
        "hbl_mpi_version": __version__,
    }


# --------------------------------------------------------------------------- one node


class NodeCheckpoints:
    """The checkpoints of one tree node: decide, write, prune, load.

    Thread use: ``wants``/``decide`` (best tracking) run on the training thread; the
    write (``write`` / ``save`` / an ``AsyncCheckpointWriter``) may run on another
    thread; it only uses the ``SavePlan`` it is given. ``load_*`` may run anywhere.

    Best tracking follows CANDLE: ``best`` is the best *checkpointed* epoch (epochs
    skipped by ``ckpt_skip_epochs`` do not count); lower is better for val_loss/loss.
    A new store continues the history found under ``last`` (its ``ckpt-info.json``);
    call ``clear()`` to start a node afresh.
    """

    def __init__(self, root_dir, node: str, params: CkptParams, metadata: dict[str, Any] | None = None):
        if not _NODE_NAME.match(node or ""):
            raise ValueError(f"node name {node!r} cannot name a checkpoint directory")
        self.root = Path(root_dir)
        self.node = node
        self.params = params
        self.metadata = {**params.metadata, **(metadata or {})}
        self.dir = self.root / node
        self.epochs_dir = self.dir / EPOCHS_DIR
        self._step_hook: Callable[[str], None] | None = None  # tests: crash injection
        self._prepared = False
        self._last_decision_time: float | None = None
        self.best_metric: float = math.inf
        self.best_epoch: int | None = None
        info = self.peek_last()
        if info is not None:
            self._track_from(info)

    # ---------------------------------------------------------------- decisions

    def _track_from(self, info: dict[str, Any]) -> None:
        bm = info.get("best_metric_last")
        self.best_metric = math.inf if bm is None else float(bm)
        self.best_epoch = info.get("best_epoch")

    def _metric(self, metrics: dict[str, float]) -> float:
        name = self.params.ckpt_save_best_metric
        if name not in metrics:
            raise KeyError(f"metrics {sorted(metrics)} lack ckpt_save_best_metric {name!r}")
        return float(metrics[name])

    def _improves(self, value: float) -> bool:
        return self.params.ckpt_save_best and value < self.best_metric  # NaN never improves

    def wants(self, epoch: int, metrics: dict[str, float], final: bool = False) -> bool:
        """Would ``decide`` write this epoch? Pure: call it before cloning the state.

        Epochs are numbered from 1 (the epoch just completed, as CANDLE). Written: the
        final epoch of a node always; otherwise nothing before ``ckpt_skip_epochs``,
        then every epoch that improves the best metric (``ckpt_save_best``) and every
        ``ckpt_save_interval``-th epoch.
        """
        p = self.params
        if final:
            return True
        if epoch < p.ckpt_skip_epochs:
            return False
        return self._improves(self._metric(metrics)) or epoch % p.ckpt_save_interval == 0

    def decide(self, epoch: int, metrics: dict[str, float], final: bool = False) -> SavePlan | None:
        """``wants`` plus the best-tracking update; returns the plan to write, or None."""
        if epoch < 1:
            raise ValueError(f"epochs are numbered from 1, got {epoch}")
        if not self.wants(epoch, metrics, final):
            return None
        value = self._metric(metrics)
        is_best = self._improves(value)
        if is_best:
            self.best_metric, self.best_epoch = value, epoch
        now = time.monotonic()
        elapsed = None if self._last_decision_time is None else now - self._last_decision_time
        self._last_decision_time = now
        return SavePlan(
            epoch=epoch,
            metrics={k: float(v) for k, v in metrics.items()},
            metric_name=self.params.ckpt_save_best_metric,
            metric_value=value,
            best_metric=None if math.isinf(self.best_metric) else self.best_metric,
            best_epoch=self.best_epoch if self.params.ckpt_save_best else None,
            is_best=is_best,
            final=final,
            elapsed=elapsed,
        )

    def save(self, epoch: int, state: ModelState, bookkeeping: dict[str, Any],
             metrics: dict[str, float], final: bool = False) -> dict[str, Any] | None:
        """Synchronous ``decide`` + ``write``; returns the new ckpt-info, or None if skipped."""
        bk = _copy_bookkeeping(bookkeeping)  # a bad value fails before best tracking moves
        plan = self.decide(epoch, metrics, final)
        if plan is None:
            return None
        return self.write(plan, state, bk)

    # ---------------------------------------------------------------- writing

    def _step(self, name: str) -> None:
        if self._step_hook is not None:
            self._step_hook(name)

    def _prepare(self) -> None:
        """First write of this store: create directories durably, drop a dead writer's leftovers."""
        if self._prepared:
            return
        self.epochs_dir.mkdir(parents=True, exist_ok=True)
        _fsync_dir(self.root)
        _fsync_dir(self.dir)
        for entry in os.scandir(self.dir):
            if entry.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
        self._prepared = True

    def _tmp_name(self, kind: str) -> Path:
        return self.dir / f"{kind}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def _metadata_list(self, plan: SavePlan) -> list[dict[str, Any]]:
        md = dict(self.metadata)
        first = {
            "model": md.pop("model", None),
            "data_checksum": md.pop("data_checksum", None),
            "node": self.node,
            "stage": stage_of(self.node),
            "parent": parent_of(self.node),
            "epoch": plan.epoch,
            "metrics": {k: _json_number(v) for k, v in plan.metrics.items()},
        }
        first.update(_versions())
        for k in first:
            md.pop(k, None)
        items = list(first.items()) + sorted(md.items())
        return [{"attribute": k, "value": v} for k, v in items]

    def write(self, plan: SavePlan, state: ModelState, bookkeeping: dict[str, Any]) -> dict[str, Any]:
        """Write one checkpoint following the module's protocol.

        Returns the ckpt-info written to disk plus ``write_seconds`` (this write's time).
        ``state`` and the tensors in ``bookkeeping`` are read here, not copied first.
        """
        t0 = time.perf_counter()
        self._prepare()
        tmp = self._tmp_name(_TMP_PREFIX)
        tmp.mkdir()
        try:
            info = self._write_tmp(tmp, plan, state, bookkeeping)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # a failed write leaves nothing behind
            raise
        self._install(tmp, plan)
        info["write_seconds"] = round(time.perf_counter() - t0, 4)
        return info

    def _write_tmp(self, tmp: Path, plan: SavePlan, state: ModelState, bookkeeping: dict[str, Any]) -> dict[str, Any]:
        """Step 1: model.pt and ckpt-info.json into ``tmp``, all fsynced."""
        flat = state.flat
        payload = {
            "format": FORMAT,
            "node": self.node,
            "epoch": plan.epoch,
            "flat": _for_disk(flat),
            "n_params": int(state.n_params),
            "step": int(state.step),
            "bookkeeping": _for_disk(bookkeeping),
        }
        with open(tmp / MODEL_FILE, "wb") as f:
            hw = _HashingWriter(f, self.params.ckpt_checksum)
            torch.save(payload, hw)
            f.flush()
            self._step("model_written")
            os.fsync(f.fileno())
        digest = hw.h.hexdigest() if hw.h is not None else None
        info = {
            "epoch": plan.epoch,
            "node": self.node,
            "save_best_metric": plan.metric_name,
            "metric_value": _json_number(plan.metric_value),
            "best_metric_last": _json_number(plan.best_metric),
            "best_epoch": plan.best_epoch,
            "is_best": plan.is_best,
            "final": plan.final,
            "metrics": {k: _json_number(v) for k, v in plan.metrics.items()},
            "model_file": MODEL_FILE,
            "model_bytes": hw.n,
            "checksum": digest,
            "checksum_algorithm": "sha256" if digest else None,
            "n_params": int(state.n_params),
            "step": int(state.step),
            "timestamp": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "time_elapsed": None if plan.elapsed is None else round(plan.elapsed, 3),
            "metadata": self._metadata_list(plan),
        }
        with open(tmp / INFO_FILE, "w") as f:
            json.dump(info, f, indent=1)
            f.write("\n")
            f.flush()
            self._step("info_written")
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        self._step("fsynced")
        return info

    def _install(self, tmp: Path, plan: SavePlan) -> None:
        """Steps 2-4: rename into epochs/NNN, swing `last` then `best`, prune."""
        target = self.epochs_dir / f"{plan.epoch:03d}"
        if os.path.lexists(target):
            # A rewrite of an existing epoch (a stale future after a crash, or a rerun
            # without clear()): swap, so `target` is always a complete checkpoint.
            if not _exchange(str(tmp), str(target)):
                aside = self._tmp_name(_TRASH_PREFIX)
                os.rename(target, aside)
                os.rename(tmp, target)
                tmp = aside
            _fsync_dir(self.epochs_dir)
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.rename(tmp, target)
            _fsync_dir(self.epochs_dir)
        self._step("renamed")

        self._point(LAST, plan.epoch)
        _fsync_dir(self.dir)
        self._step("last_swapped")
        if plan.best_epoch is not None and (self.epochs_dir / f"{plan.best_epoch:03d}").is_dir():
            if self._pointer(BEST) != plan.best_epoch:
                self._point(BEST, plan.best_epoch)
                _fsync_dir(self.dir)
        self._step("best_swapped")

        self._prune(plan.epoch, self._pointer(BEST))

    def _point(self, name: str, epoch: int) -> None:
        """Atomically (re)point ``name`` at ``epochs/NNN``: new symlink, renamed over the old."""
        tmp = self._tmp_name(_TMP_PREFIX)
        os.symlink(f"{EPOCHS_DIR}/{epoch:03d}", tmp)
        os.replace(tmp, self.dir / name)

    def _prune(self, last: int, best: int | None) -> None:
        present = self.epochs()
        keep = keep_epochs(present, last, best, self.params.ckpt_keep_mode, self.params.ckpt_keep_limit)
        for e in present:
            if e in keep:
                continue
            aside = self._tmp_name(_TRASH_PREFIX)
            os.rename(self.epochs_dir / f"{e:03d}", aside)
            shutil.rmtree(aside, ignore_errors=True)
            self._step("pruned_one")

    def clear(self) -> None:
        """Remove every checkpoint of this node (start afresh); atomic: rename, then delete."""
        prefix = f"{_TRASH_PREFIX}{self.node}-"
        if os.path.lexists(self.dir):
            aside = self.root / f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(self.dir, aside)
            _fsync_dir(self.root)
        if self.root.is_dir():  # this one, and any left by a clear() that crashed
            for entry in os.scandir(self.root):
                if entry.name.startswith(prefix) and entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
        self._prepared = False
        self._last_decision_time = None
        self.best_metric, self.best_epoch = math.inf, None

    def shrink(self, keep: str) -> None:
        """After the node finished: keep only its ``best`` or ``last`` checkpoint.

        The children fork from one of the two (``inherit``), so the rest is disk only.
        With ``keep="best"`` ``last`` is first repointed at the best epoch (atomically),
        so ``last`` never dangles. No-op when the pointer is missing.
        """
        if keep not in (BEST, LAST):
            raise ValueError(f"keep must be 'best' or 'last', got {keep!r}")
        epoch = self._pointer(keep)
        if epoch is None:
            return
        if keep == BEST and self._pointer(LAST) != epoch:
            self._point(LAST, epoch)
            _fsync_dir(self.dir)
        elif keep == LAST and self._pointer(BEST) not in (None, epoch):
            os.unlink(self.dir / BEST)
            _fsync_dir(self.dir)
        for e in self.epochs():
            if e != epoch:
                aside = self._tmp_name(_TRASH_PREFIX)
                os.rename(self.epochs_dir / f"{e:03d}", aside)
                shutil.rmtree(aside, ignore_errors=True)

    # ---------------------------------------------------------------- reading

    def epochs(self) -> list[int]:
        """Epoch directories present (complete by construction), ascending."""
        try:
            names = os.listdir(self.epochs_dir)
        except FileNotFoundError:
            return []
        return sorted(int(n) for n in names if n.isdigit())

    def _pointer(self, name: str) -> int | None:
        """Epoch a pointer names (even if its directory is gone), or None."""
        try:
            target = os.readlink(self.dir / name)
        except (FileNotFoundError, OSError):
            return None
        head, _, tail = target.rpartition("/")
        return int(tail) if head == EPOCHS_DIR and tail.isdigit() else None

    def _read_info(self, epoch: int) -> dict[str, Any] | None:
        try:
            with open(self.epochs_dir / f"{epoch:03d}" / INFO_FILE) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def peek_last(self) -> dict[str, Any] | None:
        """ckpt-info.json of the checkpoint ``last`` points at, unverified (cheap)."""
        e = self._pointer(LAST)
        return None if e is None else self._read_info(e)

    def _read(self, epoch: int) -> Checkpoint:
        path = self.epochs_dir / f"{epoch:03d}"
        info = self._read_info(epoch)
        if info is None:
            raise _Damaged(f"{path}/{INFO_FILE} is missing or unreadable")
        name = str(info.get("model_file", MODEL_FILE))
        if "/" in name or name in ("", ".", ".."):
            raise _Damaged(f"{path}/{INFO_FILE}: bad model_file {name!r}")
        model = path / name
        want = info.get("checksum")
        # A checkpoint written with ckpt_checksum off records none: only the structural
        # checks below apply to it.
        if self.params.ckpt_checksum and want:
            try:
                got = _sha256_file(model)
            except OSError as e:
                raise _Damaged(f"{model}: {e}") from None
            if got != want:
                raise _Damaged(f"{model}: checksum mismatch (sha256 {got[:16]}..., recorded {want[:16]}...)")
        try:
            obj = torch.load(model, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated/garbled file: torch raises various types
            raise _Damaged(f"{model}: cannot be loaded ({type(e).__name__}: {e})") from None
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise _Damaged(f"{model}: not an {FORMAT} checkpoint")
        flat, n = obj["flat"], int(obj["n_params"])
        if flat.dtype != torch.float32 or flat.dim() != 1 or flat.numel() != 3 * n:
            raise _Damaged(f"{model}: flat state has shape {tuple(flat.shape)}, expected ({3 * n},)")
        return Checkpoint(epoch, ModelState(flat, n, int(obj["step"])), _from_disk(obj["bookkeeping"]), info, path)

    def _load_first(self, which: str, candidates: list[int]) -> Checkpoint | None:
        pointed = candidates[0] if candidates else None
        for e in candidates:
            try:
                ck = self._read(e)
            except _Damaged as err:
                warnings.warn(f"checkpoint {self.node} epoch {e} is damaged: {err}", RuntimeWarning, stacklevel=3)
                continue
            if e != pointed:
                warnings.warn(
                    f"checkpoint {self.node}: `{which}` (epoch {pointed}) is damaged, "
                    f"falling back to epoch {e}", RuntimeWarning, stacklevel=3)
                ck.fell_back = True
            return ck
        return None

    def load_last(self) -> Checkpoint | None:
        """The checkpoint ``last`` points at, verified; else the newest older one that verifies.

        None when ``last`` is missing (the node has no checkpoint history) or nothing
        verifies. The store's best tracking continues from the returned checkpoint.
        """
        last = self._pointer(LAST)
        if last is None:
            return None
        candidates = [last] + [e for e in reversed(self.epochs()) if e < last]
        ck = self._load_first(LAST, candidates)
        if ck is not None:
            self._track_from(ck.info)
        return ck

    def load_epoch(self, epoch: int) -> Checkpoint | None:
        """The checkpoint of ``epoch``, verified; None (with a warning if damaged) otherwise.

        For a restart that needs one particular epoch (a resumed node's best epoch).
        """
        if not (self.epochs_dir / f"{epoch:03d}").is_dir():
            return None
        return self._load_first(f"epoch {epoch}", [epoch])

    def load_best(self) -> Checkpoint | None:
        """The checkpoint ``best`` points at, verified; if damaged, the older checkpoint
        with the best recorded metric that verifies (ties: the newest). None if none."""
        best = self._pointer(BEST)
        if best is None:
            return None
        older = []
        for e in self.epochs():
            if e < best:
                info = self._read_info(e)
                v = None if info is None else info.get("metric_value")
                older.append((math.inf if v is None else float(v), -e))
        return self._load_first(BEST, [best] + [-ne for _, ne in sorted(older)])


# --------------------------------------------------------------------------- restart scan


def restart_check(params: CkptParams, root=None) -> dict[str, int]:
    """Nodes with a checkpoint history under ``root`` -> the epoch ``last`` names.

    ``off``: {} without looking. ``auto``: whatever is there ({} when nothing).
    ``required``: InputError when the directory or every checkpoint is missing. Nothing
    is verified here (cheap); ``load_last`` verifies when the node resumes.
    """
    if params.ckpt_restart_mode == "off":
        return {}
    root = Path(root if root is not None else params.ckpt_directory)
    found: dict[str, int] = {}
    if root.is_dir():
        for entry in os.scandir(root):
            if entry.is_dir(follow_symlinks=False) and _NODE_NAME.match(entry.name):
                ns = NodeCheckpoints(root, entry.name, params)
                e = ns._pointer(LAST)
                if e is not None and (ns.epochs_dir / f"{e:03d}").is_dir():
                    found[entry.name] = e
    if params.ckpt_restart_mode == "required" and not found:
        why = "" if root.is_dir() else " (directory does not exist)"
        raise InputError(f"ckpt_restart_mode = required but no checkpoint found in {root}{why}")
    return found


# --------------------------------------------------------------------------- async writer


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
            msg = "; ".join(f"node {n} epoch {e}: {type(x).__name__}: {x}" for n, e, x in errors)
            raise CheckpointWriteError(f"checkpoint write failed: {msg}") from errors[0][2]

    def submit(self, node_ckpts: NodeCheckpoints, epoch: int, state_snapshot: ModelState,
               bookkeeping: dict[str, Any], metrics: dict[str, float], final: bool = False) -> SavePlan | None:
        """Queue the write of ``epoch`` if the keep/save policy wants it; returns the plan or None.

        ``state_snapshot`` must already be a private copy (``TrainState.snapshot()``,
        i.e. a clone): the writer reads it later, while training goes on. The same holds
        for tensors inside ``bookkeeping``; its containers are copied here. Use
        ``node_ckpts.wants(...)`` first to avoid cloning for an epoch that is not written.
        """
        self._raise_errors()
        if self._closed:
            raise RuntimeError("AsyncCheckpointWriter is closed")
        if not self._thread.is_alive():
            raise CheckpointWriteError("checkpoint writer thread is not running")
        bk = _copy_bookkeeping(bookkeeping)
        plan = node_ckpts.decide(epoch, metrics, final)
        if plan is None:
            return None
        self._queue.put(_Job(node_ckpts, plan, state_snapshot, bk))
        return plan

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
