"""Opening a file in OUT or ckpts: never through a link, never blocked on a FIFO, never a device.

A planted FIFO blocks ``open(2)`` for reading until someone writes (``run`` hung on a FIFO
at ``OUT/.lock``, ``--restart`` on one in place of a checkpoint file), and a link to
``/dev/zero`` reads forever (a checksum of an endless file). Every file hbl_mpi reads or
locks in OUT or ckpts is opened here: ``O_NOFOLLOW`` (a link is refused), ``O_NONBLOCK``
(a FIFO or device opens at once instead of waiting), then ``fstat`` of the descriptor we
hold must say *regular file*; reads are bounded. Files hbl_mpi writes go through
``atomic.py`` (a fresh ``O_EXCL`` name renamed into place), which follows nothing either.
"""

from __future__ import annotations

import errno
import os
import stat

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symlink"))


class UnsafeFile(OSError):
    """``path`` is not a regular file (or is larger than a bound); the message says what it is."""

    def __init__(self, path: str, what: str):
        self.path = os.fspath(path)
        self.what = what
        super().__init__(errno.EINVAL, f"{self.path} is {what}")


def kind(mode: int) -> str:
    """What a file of ``st_mode`` is, in words."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """A descriptor of ``path``, which must be a regular file; :class:`UnsafeFile` otherwise.

    Opened with ``O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC`` added to ``flags``: a symlink at
    ``path`` is refused, a FIFO or device is noticed without waiting on it.
    """
    path = os.fspath(path)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafeFile(path, "a symlink (hbl_mpi follows no link in OUT)") from None
        if e.errno == errno.ENXIO:  # write-only open of a FIFO without a reader
            raise UnsafeFile(path, "a FIFO") from None
        raise
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnsafeFile(path, f"{kind(st.st_mode)}, not a regular file")
    return fd


def read_regular(path, limit: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them (UnsafeFile beyond)."""
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise UnsafeFile(path, f"{size:,} bytes long, more than the {limit:,} such a file can hold")
        chunks, total = [], 0
        while True:
            b = os.read(fd, min(1 << 20, limit + 1 - total))
            if not b:
                return b"".join(chunks)
            chunks.append(b)
            total += len(b)
            if total > limit:  # grew while we read
                raise UnsafeFile(path, f"more than the {limit:,} bytes such a file can hold")
    finally:
        os.close(fd)


def check_regular(path) -> None:
    """Raise :class:`UnsafeFile` unless ``path`` itself (not a link's target) is a regular
    file; FileNotFoundError when absent. For files a library opens by name (HDF5)."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFile(os.fspath(path), f"{kind(st.st_mode)}, not a regular file")


def check_own_dir(path) -> None:
    """Raise :class:`UnsafeFile` when ``path`` exists and is anything but a real directory
    (a symlink to one included): hbl_mpi creates its directories in OUT itself."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeFile(os.fspath(path), f"{kind(st.st_mode)}, not a directory hbl_mpi created")
