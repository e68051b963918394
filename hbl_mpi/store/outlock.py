"""One run per output directory: an exclusive ``flock`` on ``OUT/.lock`` for the run's life.

Two runs on one OUT race (both rewrite results.h5), silently train the same nodes twice
(two ``--restart``), or replace a live run's results (``--overwrite``). Rank 0 (the
serial driver) takes the lock after the input checks and before it writes anything in
OUT, and holds it until it exits. ``flock`` locks belong to the open file, so the kernel
drops the lock when the process dies in any way (``kill -9``, OOM): a stale lock never
blocks a restart. The file's text (pid, host, start time) is only for the message the
second run prints; the lock itself decides.

The file is opened through ``safe_open`` (``O_NOFOLLOW | O_NONBLOCK``, then it must be a
regular file: a symlink, a FIFO or a device planted at OUT/.lock is refused at once) and
never replaced (the lock is on its inode), so it is the one file in OUT that does not
go through ``atomic.py``. On a file system without ``flock`` (some NFS/Lustre mounts) the
run goes on with a warning: it cannot be protected there, but it should not be refused.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
import time
from dataclasses import dataclass

from hbl_mpi.core.errors import InputError
from hbl_mpi.core.output_guard import LOCK_NAME
from hbl_mpi.core.safe_open import UnsafeFile, open_regular


def lock_path(out_dir: str) -> str:
    return os.path.join(out_dir, LOCK_NAME)


@dataclass
class OutLock:
    """A held lock on an output directory (``release`` or process exit frees it)."""

    path: str
    fd: int | None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def holder_text(pid: int | None = None, host: str | None = None, since: float | None = None) -> str:
    """What the lock file says about its holder (one line)."""
    pid = os.getpid() if pid is None else pid
    host = socket.gethostname() if host is None else host
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(time.time() if since is None else since))
    return f"pid {pid} on host {host} since {stamp}"


def check_free(out_dir: str) -> None:
    """InputError at once if a live run holds ``out_dir`` (creates nothing): a second run
    is refused before it reads its data, not half a minute later."""
    path = lock_path(out_dir)
    try:
        fd = open_regular(path)  # O_NONBLOCK: a FIFO planted there must not hang the run
    except UnsafeFile as e:
        raise InputError(_not_a_lock(e)) from None
    except OSError:
        return  # absent (no run yet): acquire() creates it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise InputError(_in_use(out_dir, path, fd)) from None
    finally:
        os.close(fd)


def _not_a_lock(e: UnsafeFile) -> str:
    if "symlink" in e.what:
        return f"{e.path!r} is a symlink: remove it (hbl_mpi writes no file in OUT through a link)"
    return f"{e.path!r} is {e.what}: remove it (OUT/.lock must be a regular file, hbl_mpi's run lock)"


def _in_use(out_dir: str, path: str, fd: int) -> str:
    holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
    holder = holder.replace("pid ", "run pid ", 1) if holder.startswith("pid ") else holder
    return f"{out_dir} is in use by {holder} (lock {path}); wait for it to end or use another --out"


def acquire(out_dir: str, *, log=None) -> OutLock:
    """Create ``out_dir`` if needed and lock it; InputError when another run holds it."""
    path = lock_path(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
        fd = open_regular(path, os.O_RDWR | os.O_CREAT, 0o644)
    except UnsafeFile as e:
        raise InputError(_not_a_lock(e)) from None
    except OSError as e:
        raise InputError(f"cannot create the lock file {path!r}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            try:
                message = _in_use(out_dir, path, fd)
            finally:
                os.close(fd)
            raise InputError(message) from None
        (log or _warn)(f"[hbl_mpi] warning: cannot lock {path} ({e.strerror}): this file system "
                       "does not stop a second run on the same OUT")
        return OutLock(path, fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, (holder_text() + "\n").encode(), 0)
    return OutLock(path, fd)


def _warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
