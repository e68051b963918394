"""What a checkpoint is on disk: the names, the encoding of its bookkeeping, its checksum.

Layout (one directory per tree node, CANDLE's ``ckpts/`` scheme)::

    <root>/<node>/epochs/NNN/model.pt         ModelState + the trainer's bookkeeping (torch.save)
    <root>/<node>/epochs/NNN/ckpt-info.json   epoch, metric, best metric, checksum, metadata, ...
    <root>/<node>/last -> epochs/NNN          symlink: the newest checkpoint of the node
    <root>/<node>/best -> epochs/NNN          symlink: the best checkpoint (by ckpt_save_best_metric)

``model.pt`` is read with ``torch.load(weights_only=True)``: the bookkeeping holds only
containers, numbers, strings and tensors (``ModelState`` is stored tagged), so reading a
checkpoint never runs code. The store (``store.py``) writes and reads these files; this
module only says what they hold.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import math
import os
import platform
import re
import sys
from typing import Any

import torch

from hbl_mpi import __version__
from hbl_mpi.core.safe_open import check_own_dir, open_regular, read_regular
from hbl_mpi.train.flat_state import ModelState

FORMAT = "hbl_mpi.ckpt/1"
MODEL_FILE = "model.pt"
INFO_FILE = "ckpt-info.json"
EPOCHS_DIR = "epochs"
LAST = "last"
BEST = "best"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
NODE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")

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


class HashingWriter:
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


def sha256_file(path, chunk: int = 8 << 20) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f, chunk)


def sha256_stream(f, chunk: int = 8 << 20) -> str:
    """SHA-256 of what is left to read in the binary file ``f``."""
    h = hashlib.sha256()
    while True:
        b = f.read(chunk)
        if not b:
            return h.hexdigest()
        h.update(b)


INFO_LIMIT = 1 << 20
"""Bytes a ckpt-info.json may have (ours are a few KB): a bound for a planted endless file."""


def read_info_file(path) -> dict[str, Any]:
    """A ckpt-info.json: a regular file (no link, FIFO or device: ``safe_open``), bounded.
    OSError (``UnsafeFile`` included) or ValueError when it is not one we can use."""
    info = json.loads(read_regular(path, INFO_LIMIT))
    if not isinstance(info, dict):
        raise ValueError(f"{path}: not a JSON object")
    return info


class ModelFileError(Exception):
    """A ``model.pt`` that cannot be used; the message names the file and why."""


def load_model_file(path, info: dict[str, Any], verify_checksum: bool) -> Any:
    """``torch.load`` of ``model.pt``, which must be a regular file in a real epoch directory
    (no link, FIFO or device: a planted one must not hang a restart) of the size its
    ckpt-info recorded; the SHA-256 is checked (``verify_checksum`` and one recorded: a
    checkpoint written with ckpt_checksum off has none) on the descriptor that is loaded."""
    try:
        epoch_dir = os.path.dirname(os.fspath(path))  # <node>/epochs/NNN: none of them a planted link
        for d in (epoch_dir, os.path.dirname(epoch_dir), os.path.dirname(os.path.dirname(epoch_dir))):
            check_own_dir(d)
        f = os.fdopen(open_regular(path), "rb")
    except OSError as e:
        raise ModelFileError(f"{path}: {e}") from None
    with f:
        size, want = os.fstat(f.fileno()).st_size, info.get("model_bytes")
        if isinstance(want, int) and size != want:
            raise ModelFileError(f"{path}: {size:,} bytes, its ckpt-info.json recorded {want:,}")
        digest = info.get("checksum")
        if verify_checksum and digest:
            got = sha256_stream(f)
            if got != digest:
                raise ModelFileError(f"{path}: checksum mismatch (sha256 {got[:16]}..., recorded {digest[:16]}...)")
            f.seek(0)
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated/garbled file: torch raises various types
            raise ModelFileError(f"{path}: cannot be loaded ({type(e).__name__}: {e})") from None


def exchange(a: str, b: str) -> bool:
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


def json_number(x) -> float | None:
    """JSON has no NaN/inf: non-finite metrics are stored as null."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


LEAF_TYPES = (int, float, bool, str, bytes, type(None))


def copy_bookkeeping(obj, where: str = "bookkeeping"):
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
    if isinstance(obj, LEAF_TYPES):
        return obj
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: dict keys must be str, got {type(k).__name__} {k!r}")
            out[k] = copy_bookkeeping(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        items = [copy_bookkeeping(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(
        f"{where}: cannot checkpoint a {type(obj).__module__}.{type(obj).__name__}; "
        "use tensors, numbers, strings, lists, tuples, dicts or ModelState"
    )


def for_disk(obj):
    """Tensors to CPU and compact (a view of a bigger storage would save the whole storage)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.device.type != "cpu":
            t = t.to("cpu")
        if not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.contiguous().clone()
        return t
    if isinstance(obj, dict):
        return {k: for_disk(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [for_disk(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(for_disk(v) for v in obj)
    return obj


def from_disk(obj):
    if isinstance(obj, dict):
        if obj.get("__model_state__") is True and set(obj) == {"__model_state__", "flat", "n_params", "step"}:
            return ModelState(obj["flat"], int(obj["n_params"]), int(obj["step"]))
        return {k: from_disk(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_disk(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(from_disk(v) for v in obj)
    return obj


def versions() -> dict[str, str]:
    return {
        "framework": "pytorch",
        "framework_version": torch.__version__,
        "python_version": platform.python_version(),
        "hbl_mpi_version": __version__,
    }


def info_metadata(info: dict[str, Any] | None) -> dict[str, Any]:
    """ckpt-info.json's MoDaC-style attribute/value list as a dict."""
    if not info:
        return {}
    return {m.get("attribute"): m.get("value") for m in info.get("metadata") or [] if isinstance(m, dict)}
