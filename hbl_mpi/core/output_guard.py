"""One rule for outputs: a command never writes over one of its own inputs, nor into the
OUT of a run that is alive.

``curate R.h5 --data d.h5 --out d.h5`` replaced the data it had just read, ``data normalise
d.h5 --out OUT/results.h5`` a live run's results. Every command that writes a file calls
:func:`check_outputs` with the paths it will write and the paths it reads, before it
writes anything. An output is refused (``InputError``: exit 2, one line naming both paths)
when

* it resolves to an input: the same ``realpath`` (through any symlink, ``./`` or ``..``),
  or, when both exist, the same file (``st_dev``, ``st_ino``: a hard link, a bind mount);
* it lies inside a directory (at any depth) whose ``.lock`` another process holds: a run's
  OUT (``store/outlock.py`` takes that lock for the run's life).

The lock probe opens ``.lock`` through ``safe_open`` (a FIFO there never blocks) and asks
for a shared ``flock`` without waiting: refused means a live holder. It creates nothing.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Iterable

from hbl_mpi.core.errors import InputError
from hbl_mpi.core.safe_open import UnsafeFile, open_regular

LOCK_NAME = ".lock"
"""The lock file of a run's output directory (``store/outlock.py``)."""


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def lock_holder(directory: str) -> str | None:
    """Who holds ``directory/.lock`` (its one-line text, or "another process"); None when
    nobody does (no file, not a regular file, or the lock is free)."""
    path = os.path.join(directory, LOCK_NAME)
    try:
        fd = open_regular(path)
    except (OSError, UnsafeFile):
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
                return text.splitlines()[0] if text else "another process"
        return None
    finally:
        os.close(fd)  # closing drops our shared lock, if we got it


def locked_ancestor(path: str) -> tuple[str, str] | None:
    """(directory, holder) of the nearest directory above ``path`` whose lock is held."""
    folder = os.path.dirname(os.path.realpath(path))
    while True:
        holder = lock_holder(folder)
        if holder is not None:
            return folder, holder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def check_outputs(outputs: Iterable[str], inputs: Iterable[str | None]) -> None:
    """InputError if an output would overwrite an input or lands in a locked OUT (module doc)."""
    ins = [(p, os.path.realpath(p), _identity(p)) for p in inputs if p]
    checked_dirs: set[str] = set()
    for out in outputs:
        real = os.path.realpath(out)
        ident = _identity(out)
        for given, given_real, given_ident in ins:
            if real == given_real or (ident is not None and ident == given_ident):
                how = "" if real == given_real else " (the same file under another name: a hard link)"
                raise InputError(f"output {out!r} is the input {given!r}{how}: writing it would destroy the "
                                 "input; write to another path")
        folder = os.path.dirname(real)
        if folder in checked_dirs:
            continue
        checked_dirs.add(folder)
        locked = locked_ancestor(real)
        if locked is not None:
            where, holder = locked
            holder = holder.replace("pid ", "run pid ", 1) if holder.startswith("pid ") else holder
            raise InputError(f"output {out!r} is inside {where!r}, the output directory of a live run ({holder}; "
                             f"lock {os.path.join(where, LOCK_NAME)}); wait for it to end or write elsewhere")
