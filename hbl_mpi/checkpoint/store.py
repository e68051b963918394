"""The checkpoint store of one tree node: decide, write, prune, load (layout: ``format.py``).

Why symlinks replaced with ``os.replace`` instead of the seed's hardlinks: CANDLE's module
hardlinks *files* because a directory cannot be hardlinked, and its ``last`` is still a
symlink that it deletes and recreates (a window with no ``last``). Here a new symlink is
created under a temporary name and renamed over ``last``: rename(2) replaces the link in
one step, so at every instant ``last`` names either the old or the new epoch, never
nothing. Symlinks keep CANDLE's look (``ls -l``, ``cd last``, tools that open
``last/model.pt``) and are relative, so a checkpoint tree can be moved or copied.

Write protocol (a checkpoint is never modified in place):

1. write ``model.pt`` and ``ckpt-info.json`` into ``<node>/.tmp-*`` with ``atomic.py``
   (each file fsynced; ``model.pt`` read back and checked against the size and SHA-256
   computed while writing), fsync the directory;
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

A full disk fails the write at step 1 (or 2, 3): the temporary directory is removed and
``last`` stays on the previous complete, verified checkpoint.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import socket
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from hbl_mpi.core.atomic import fsync_dir, replace_file, replace_text
from hbl_mpi.core.errors import InputError
from hbl_mpi.core.safe_open import check_own_dir
from hbl_mpi.tree.plan import parent_of, stage_of
from hbl_mpi.train.flat_state import ModelState
from hbl_mpi.checkpoint import keep
from hbl_mpi.checkpoint.format import (BEST, EPOCHS_DIR, FORMAT, INFO_FILE, LAST, MODEL_FILE, NODE_NAME, TMP_PREFIX,
                     TRASH_PREFIX, HashingWriter, copy_bookkeeping, exchange, for_disk, from_disk,
                     json_number, load_model_file, ModelFileError, read_info_file, sha256_file, versions)
from hbl_mpi.checkpoint.params import CkptParams


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



class NodeCheckpoints:
    """The checkpoints of one tree node: decide, write, prune, load.

    Thread use: ``wants``/``decide`` (best tracking) run on the training thread; the
    write (``write`` / ``save`` / an ``AsyncCheckpointWriter``) may run on another
    thread; it only uses the ``SavePlan`` it is given. ``load_*`` may run anywhere.

    Best tracking follows ``keep.improves`` (CANDLE's: the best *checkpointed* epoch).
    A new store continues the history found under ``last`` (its ``ckpt-info.json``);
    call ``clear()`` to start a node afresh.
    """

    def __init__(self, root_dir, node: str, params: CkptParams, metadata: dict[str, Any] | None = None):
        if not NODE_NAME.match(node or ""):
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

    def wants(self, epoch: int, metrics: dict[str, float], final: bool = False) -> bool:
        """Would ``decide`` write this epoch (``keep.wants``)? Pure: call it before cloning the state."""
        return keep.wants(self.params, epoch, self._metric(metrics), self.best_metric, final)

    def decide(self, epoch: int, metrics: dict[str, float], final: bool = False) -> SavePlan | None:
        """``wants`` plus the best-tracking update; returns the plan to write, or None."""
        if epoch < 1:
            raise ValueError(f"epochs are numbered from 1, got {epoch}")
        if not self.wants(epoch, metrics, final):
            return None
        value = self._metric(metrics)
        is_best = keep.improves(self.params, value, self.best_metric)
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
        bk = copy_bookkeeping(bookkeeping)  # a bad value fails before best tracking moves
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
        for d in (self.dir, self.epochs_dir):  # never written through a planted link (safe_open)
            check_own_dir(d)
        self.epochs_dir.mkdir(parents=True, exist_ok=True)
        fsync_dir(self.root)
        fsync_dir(self.dir)
        for entry in os.scandir(self.dir):
            if entry.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
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
            "metrics": {k: json_number(v) for k, v in plan.metrics.items()},
        }
        first.update(versions())
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
        tmp = self._tmp_name(TMP_PREFIX)
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
        """Step 1: model.pt (verified) and ckpt-info.json into ``tmp``, all fsynced."""
        flat = state.flat
        payload = {
            "format": FORMAT,
            "node": self.node,
            "epoch": plan.epoch,
            "flat": for_disk(flat),
            "n_params": int(state.n_params),
            "step": int(state.step),
            "bookkeeping": for_disk(bookkeeping),
        }
        written: list[HashingWriter] = []

        def write_model(path: str) -> None:
            with open(path, "wb") as f:
                hw = HashingWriter(f, self.params.ckpt_checksum)
                written.append(hw)
                torch.save(payload, hw)
                f.flush()
                self._step("model_written")

        def verify_model(path: str) -> None:  # the bytes on disk are the bytes torch.save gave
            hw = written[-1]
            size = os.stat(path).st_size
            if size != hw.n:
                raise OSError(f"{path}: {size} bytes on disk, {hw.n} written")
            if hw.h is not None and sha256_file(path) != hw.h.hexdigest():
                raise OSError(f"{path}: the bytes read back differ from the bytes written")

        replace_file(str(tmp / MODEL_FILE), write_model, verify=verify_model)
        hw = written[-1]
        digest = hw.h.hexdigest() if hw.h is not None else None
        info = {
            "epoch": plan.epoch,
            "node": self.node,
            "save_best_metric": plan.metric_name,
            "metric_value": json_number(plan.metric_value),
            "best_metric_last": json_number(plan.best_metric),
            "best_epoch": plan.best_epoch,
            "is_best": plan.is_best,
            "final": plan.final,
            "metrics": {k: json_number(v) for k, v in plan.metrics.items()},
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
        replace_text(str(tmp / INFO_FILE), json.dumps(info, indent=1) + "\n")
        self._step("info_written")
        fsync_dir(tmp)
        self._step("fsynced")
        return info

    def _install(self, tmp: Path, plan: SavePlan) -> None:
        """Steps 2-4: rename into epochs/NNN, swing `last` then `best`, prune."""
        target = self.epochs_dir / f"{plan.epoch:03d}"
        if os.path.lexists(target):
            # A rewrite of an existing epoch (a stale future after a crash, or a rerun
            # without clear()): swap, so `target` is always a complete checkpoint.
            if not exchange(str(tmp), str(target)):
                aside = self._tmp_name(TRASH_PREFIX)
                os.rename(target, aside)
                os.rename(tmp, target)
                tmp = aside
            fsync_dir(self.epochs_dir)
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.rename(tmp, target)
            fsync_dir(self.epochs_dir)
        self._step("renamed")

        self._point(LAST, plan.epoch)
        fsync_dir(self.dir)
        self._step("last_swapped")
        if plan.best_epoch is not None and (self.epochs_dir / f"{plan.best_epoch:03d}").is_dir():
            if self._pointer(BEST) != plan.best_epoch:
                self._point(BEST, plan.best_epoch)
                fsync_dir(self.dir)
        self._step("best_swapped")

        self._prune(plan.epoch, self._pointer(BEST))

    def _point(self, name: str, epoch: int) -> None:
        """Atomically (re)point ``name`` at ``epochs/NNN``: new symlink, renamed over the old."""
        tmp = self._tmp_name(TMP_PREFIX)
        os.symlink(f"{EPOCHS_DIR}/{epoch:03d}", tmp)
        os.replace(tmp, self.dir / name)

    def _prune(self, last: int, best: int | None) -> None:
        present = self.epochs()
        kept = keep.keep_epochs(present, last, best, self.params.ckpt_keep_mode, self.params.ckpt_keep_limit)
        for e in present:
            if e in kept:
                continue
            aside = self._tmp_name(TRASH_PREFIX)
            os.rename(self.epochs_dir / f"{e:03d}", aside)
            shutil.rmtree(aside, ignore_errors=True)
            self._step("pruned_one")

    def clear(self) -> None:
        """Remove every checkpoint of this node (start afresh); atomic: rename, then delete."""
        prefix = f"{TRASH_PREFIX}{self.node}-"
        if os.path.lexists(self.dir):
            aside = self.root / f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(self.dir, aside)
            fsync_dir(self.root)
        if self.root.is_dir():  # this one, and any left by a clear() that crashed
            for entry in os.scandir(self.root):
                if entry.name.startswith(prefix) and entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                elif entry.name.startswith(prefix):  # a planted link renamed aside: the link, not its target
                    os.unlink(entry.path)
        self._prepared = False
        self._last_decision_time = None
        self.best_metric, self.best_epoch = math.inf, None

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
        try:  # a FIFO or a link to /dev/zero planted here must not hang a restart
            return read_info_file(self.epochs_dir / f"{epoch:03d}" / INFO_FILE)
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
        try:  # a regular file of the recorded size (no link, FIFO, device), its checksum verified
            obj = load_model_file(model, info, self.params.ckpt_checksum)
        except ModelFileError as e:
            raise _Damaged(str(e)) from None
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise _Damaged(f"{model}: not an {FORMAT} checkpoint")
        flat, n = obj["flat"], int(obj["n_params"])
        if flat.dtype != torch.float32 or flat.dim() != 1 or flat.numel() != 3 * n:
            raise _Damaged(f"{model}: flat state has shape {tuple(flat.shape)}, expected ({3 * n},)")
        return Checkpoint(epoch, ModelState(flat, n, int(obj["step"])), from_disk(obj["bookkeeping"]), info, path)

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
            if entry.is_dir(follow_symlinks=False) and NODE_NAME.match(entry.name):
                ns = NodeCheckpoints(root, entry.name, params)
                e = ns._pointer(LAST)
                if e is not None and (ns.epochs_dir / f"{e:03d}").is_dir():
                    found[entry.name] = e
    if params.ckpt_restart_mode == "required" and not found:
        why = "" if root.is_dir() else " (directory does not exist)"
        raise InputError(f"ckpt_restart_mode = required but no checkpoint found in {root}{why}")
    return found

