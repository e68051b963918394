"""The one way this package replaces a file: temporary name, verify, fsync, ``os.replace``.

Every file hbl_mpi writes (results.h5, checkpoints, run_stats.json, report files, plan
CSVs, data files) goes through :func:`replace_file`, so the rules below hold everywhere:

* **No symlink is followed.** The temporary file is created by ``tempfile.mkstemp`` in the
  target's own directory: a fresh random name opened with ``O_CREAT | O_EXCL`` (which
  refuses an existing name, a dangling symlink included), so a link planted at a
  predictable ``*.tmp`` name is never written through. ``os.replace`` then renames over
  the target *entry*: a symlink planted at the target is replaced, its destination is
  never touched.
* **Nothing half-written is installed.** The writer fills the temporary file; the
  optional ``verify`` callback reopens it (e.g. reads results.h5 back) before it may
  replace the old file. Any failure removes the temporary file and leaves the previous
  file exactly as it was.
* **fsync policy: always.** The file is fsync'd before the rename and its directory after
  it, so after a crash or power loss the name holds either the old or the new complete
  file. Every file written here is the product of minutes of training or of a user's
  command; a few milliseconds of fsync are nothing beside that.
* **A full disk is named.** A failure whose cause is ``ENOSPC``/``EDQUOT`` (also through
  HDF5's wrapped errors, which keep only the message), or any failure while the file
  system has less than 1 MiB free (HDF5 can "succeed" on a full disk and leave a short
  file that only ``verify`` catches), raises :class:`WriteFailed` with ``disk_full=True``; callers turn it into the one-line messages of the exit codes (docs/operations.md).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from typing import Callable, Iterable

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_FULL_TEXT = ("no space left on device", "disk quota exceeded", "file too large")


class WriteFailed(OSError):
    """Replacing ``path`` failed; the previous file (if any) is intact."""

    def __init__(self, path: str, cause: BaseException, disk_full: bool):
        self.path = path
        self.cause = cause
        self.disk_full = disk_full
        what = "disk full" if disk_full else f"{type(cause).__name__}: {cause}"
        super().__init__(errno.ENOSPC if disk_full else errno.EIO, f"{what} while writing {path}")


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or anything in its cause/context chain) says the disk is full."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, WriteFailed):
            return exc.disk_full
        if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
            return True
        if any(t in str(exc).lower() for t in _FULL_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _fsync(path: str, flags: int) -> None:
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """fsync a directory, so a rename inside it survives a crash."""
    _fsync(path, os.O_DIRECTORY)


def _fsync_file(path: str) -> None:
    _fsync(path, os.O_NOFOLLOW)


def replace_file(path: str, write: Callable[[str], object], *,
                 verify: Callable[[str], object] | None = None, mode: int = 0o644) -> None:
    """Atomically replace ``path`` with what ``write(tmp_path)`` puts in a fresh file.

    ``write`` receives the path of an empty temporary file in ``path``'s directory (it may
    truncate and rewrite it, as HDF5 libraries do). ``verify(tmp_path)``, when given, must
    raise if the file is not what it should be. Raises :class:`WriteFailed` (the old file
    kept) on any failure of writing, syncing or verifying.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    try:  # inside the wrapper: a read-only folder or no free inode is a WriteFailed, never a traceback
        fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(base), suffix=".tmp", dir=folder)
        os.close(fd)
    except OSError as e:
        raise WriteFailed(path, e, is_disk_full(e) or _nearly_full(folder)) from e
    try:
        try:
            os.chmod(tmp, mode & ~_umask())
            write(tmp)
            if os.path.islink(tmp):  # the writer must fill the file, not swap in a link
                raise OSError(errno.ELOOP, f"temporary file {tmp} became a symlink")
            _fsync_file(tmp)
            if verify is not None:
                verify(tmp)
        except BaseException as e:
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            raise WriteFailed(path, e, is_disk_full(e) or _nearly_full(folder)) from e
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(folder)


def temporary_prefix(path: str) -> str:
    """The start of the temporary names ``replace_file`` uses for ``path`` (``.results.h5.``)."""
    return f".{os.path.basename(path)}."


_TEMP_TAIL = re.compile(r"^[a-z0-9_]{8}\.tmp$")  # tempfile's random part (8 of [a-z0-9_]), then .tmp


def remove_stale_temporaries(folder: str, names: Iterable[str]) -> tuple[int, int]:
    """Remove the temporary files ``replace_file`` left in ``folder`` for the files ``names``.

    A writer killed between ``mkstemp`` and ``os.replace`` (SIGKILL, a node's wall-clock
    limit) leaves ``.results.h5.k3j9x_2a.tmp`` beside the file: as large as the file
    itself, and never removed (issue 28 item 8). Call only while holding the folder's lock
    (no live writer of ours). Only our names are touched, and only regular files and
    symlinks (the link, never its target). Returns (files removed, bytes freed).
    """
    prefixes = [temporary_prefix(n) for n in names]
    removed = freed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0, 0
    for entry in entries:
        prefix = next((p for p in prefixes if entry.name.startswith(p)), None)
        if prefix is None or not _TEMP_TAIL.match(entry.name[len(prefix):]):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        removed += 1
        freed += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return removed, freed


FULL_BELOW = 1 << 20
"""Free bytes under which a failed write counts as a full disk whatever its error said."""


def _nearly_full(folder: str) -> bool:
    """Whether the file system of ``folder`` is (nearly) out of space or inodes.

    HDF5 on a full disk may report success and leave a file without its last nodes: only
    ``verify`` notices, with an error that names no errno. The free space tells why.
    """
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < FULL_BELOW or (st.f_files > 0 and st.f_favail == 0)


def replace_bytes(path: str, data: bytes, **kw) -> None:
    """Atomically replace ``path`` with ``data`` (see :func:`replace_file`)."""

    def _write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()

    replace_file(path, _write, **kw)


def replace_text(path: str, text: str, **kw) -> None:
    """Atomically replace ``path`` with UTF-8 ``text``."""
    replace_bytes(path, text.encode("utf-8"), **kw)


def _umask() -> int:
    """The process umask, read without setting it (``os.umask`` would race other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022
