"""Refuse an HDF5 file that would run code when pandas/PyTables read it.

PyTables unpickles two things behind pandas' back: a node *attribute* that is a string
ending in ``.`` (``AttributeSet.__getattr__``: "pickled values always end with a '.'"),
and the rows of a ``VLArray`` whose ``PSEUDOATOM`` is ``object`` (``ObjectAtom``, which
pandas' fixed format uses for object columns). A crafted data file or results.h5 with
``attrs.note = obj_with___reduce__`` runs ``obj.__reduce__``'s callable on ``data
inspect``, ``run``, ``report`` or ``run --restart``.

:func:`check_file` reads the file with h5py (which never unpickles) *before* pandas
opens it, and inspects every such pickle statically with ``pickletools`` (nothing is
executed): each global it imports must be on :data:`ALLOWED_GLOBALS`, the handful that
pandas' own metadata and CANDLE's ``OrderedDict`` attributes need (numpy arrays of
objects, dtypes, ordered dicts). A global it cannot name statically (a ``STACK_GLOBAL``
whose module and name are not plain strings pushed just before it, or an ``EXT*``
opcode) is refused too. Files that pass hold only pickles that build plain data.
"""

from __future__ import annotations

import pickletools

import numpy as np

from hbl_mpi.core.errors import InputError

ALLOWED_GLOBALS = frozenset({
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # protocol-0 pickles of bytes (PyTables pickles attributes with protocol 0)
})
"""Globals a pickle in an HDF5 file may import: each builds data and calls nothing else."""

_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
               "BINSTRING", "STRING"}
_NO_STACK_EFFECT = {"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "FRAME", "PROTO"}
_GETS = {"GET", "BINGET", "LONG_BINGET"}
_UNKNOWN = object()


def unsafe_globals(data: bytes) -> list[str]:
    """The globals in pickle ``data`` that are not allowed (``[]``: safe, or no pickle at all).

    A stream that stops parsing part-way is judged by the opcodes before the break: that
    is as far as ``pickle.loads`` would get before it raised.
    """
    bad: list[str] = []
    pushed: list[object] = []  # values of the last stack pushes (strings, or _UNKNOWN)
    memo: dict[int, object] = {}
    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                if (module, attr) not in ALLOWED_GLOBALS:
                    bad.append(f"{module}.{attr}")
                pushed.append(_UNKNOWN)
            elif name == "STACK_GLOBAL":
                module, attr = (pushed[-2], pushed[-1]) if len(pushed) >= 2 else (_UNKNOWN, _UNKNOWN)
                if not (isinstance(module, str) and isinstance(attr, str)):
                    bad.append("<a global named at run time>")
                elif (module, attr) not in ALLOWED_GLOBALS:
                    bad.append(f"{module}.{attr}")
                pushed.append(_UNKNOWN)
            elif name.startswith("EXT"):
                bad.append(f"<extension code {arg}>")
                pushed.append(_UNKNOWN)
            elif name in _STRING_OPS:
                pushed.append(arg.decode("latin-1") if isinstance(arg, bytes) else str(arg))
            elif name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else _UNKNOWN
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg)] = pushed[-1] if pushed else _UNKNOWN
            elif name in _GETS:
                pushed.append(memo.get(int(arg), _UNKNOWN))
            elif name not in _NO_STACK_EFFECT:
                pushed.append(_UNKNOWN)  # anything else changes the stack: its top is unknown now
    except Exception:  # not (or no longer) a pickle: pickle.loads stops at the same byte
        pass
    return bad


def _as_bytes(value) -> bytes | None:
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).rstrip(b"\x00")
    if isinstance(value, (str, np.str_)):
        return str(value).encode("utf-8", "surrogateescape")
    return None


def _attribute_problems(where: str, attrs) -> list[str]:
    out = []
    for key in list(attrs.keys()):
        try:
            value = attrs[key]
        except Exception as e:  # h5py cannot decode it: PyTables might, so it is not vouched for
            out.append(f"{where} attribute {key!r} cannot be checked ({type(e).__name__})")
            continue
        items = value.ravel().tolist() if isinstance(value, np.ndarray) and value.dtype.kind in "SUO" \
            else [value]
        for item in items:
            raw = _as_bytes(item)
            if raw and raw.endswith(b"."):
                bad = unsafe_globals(raw)
                if bad:
                    out.append(f"{where} attribute {key!r} is a pickle that imports {bad[0]}")
                    break
    return out


def _object_array_problems(where: str, dset) -> list[str]:
    """The rows of a PyTables ``ObjectAtom`` VLArray are pickles, unpickled when read."""
    kind = dset.attrs.get("PSEUDOATOM", None) if "PSEUDOATOM" in dset.attrs else None
    kind = _as_bytes(kind) if kind is not None else None
    flavor = _as_bytes(dset.attrs["FLAVOR"]) if "FLAVOR" in dset.attrs else None
    if kind != b"object" and flavor != b"Object":
        return []
    try:
        rows = dset[()]
    except Exception as e:
        return [f"{where} (pickled objects) cannot be checked ({type(e).__name__})"]
    for row in np.atleast_1d(rows):
        raw = np.asarray(row).tobytes()
        bad = unsafe_globals(raw)
        if bad:
            return [f"{where} holds a pickle that imports {bad[0]}"]
    return []


def problems(path: str) -> list[str]:
    """Every place in the HDF5 file ``path`` whose pickle would import a global not allowed."""
    import h5py

    found: list[str] = []
    with h5py.File(path, "r") as f:  # OSError: not HDF5 or not openable (the caller's reader says so)
        try:
            found += _attribute_problems("node /", f.attrs)

            def visit(name, obj):
                where = f"node /{name}"
                found.extend(_attribute_problems(where, obj.attrs))
                if isinstance(obj, h5py.Dataset):
                    found.extend(_object_array_problems(where, obj))

            f.visititems(visit)
        except Exception as e:  # opened but cannot be walked: what is not checked is not read
            raise _Damaged(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    return found


class _Damaged(Exception):
    """The file opened but its tree could not be walked."""


def check_file(path: str, what: str = "file") -> None:
    """InputError (one line naming ``path``) if reading it with pandas could run code.

    ``what`` names the file's role in the message ("data file", "results file"). A file
    h5py cannot open is left to the caller's own reader, which reports it in its words.
    """
    try:
        found = problems(path)
    except _Damaged as e:
        raise InputError(f"{what} {path!r} is damaged or truncated (cannot check its nodes: {e})") from None
    except OSError:
        return  # not HDF5, truncated, unreadable: the reader that follows says so
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise InputError(f"{what} {path!r} refused: {found[0]}{more}; reading it would run code "
                         "(hbl_mpi never unpickles objects from files)")
