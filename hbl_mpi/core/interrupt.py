"""SIGTERM is handled as SIGINT is: the finished nodes are flushed, every rank stops.

Batch systems (LSF, Slurm, PBS) end a job at its wall-clock limit with SIGTERM, and
then, a grace period later, SIGKILL. Python's default for SIGTERM is to die at once,
which lost every node finished since the last flush. Hydra's ``mpiexec`` forwards a
SIGTERM it receives to every rank (measured here: each rank's handler ran within 1 ms
of ``kill -TERM <mpiexec>``, and mpiexec then waited for the ranks and exited with their
status), as Slurm's ``srun`` and ``scancel`` signal every task.

:func:`install` makes SIGTERM raise :class:`Terminated`, a ``KeyboardInterrupt``, so the
one interrupt path the scheduler, the worker and the serial driver already have for
Ctrl-C (flush the results, end every rank) serves both; only the exit status (143 =
128 + SIGTERM, the shell's convention) and the line differ.
"""

from __future__ import annotations

import contextlib
import signal

EXIT_INTERRUPTED = 130
"""Exit status after SIGINT (Ctrl-C): 128 + 2."""
EXIT_TERMINATED = 143
"""Exit status after SIGTERM (a batch system's wall-clock limit, ``kill``): 128 + 15."""


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM (see :func:`install`)."""


class _Deferral:
    """While ``depth`` > 0 a SIGTERM is only noted (``pending``), raised when the last
    :func:`deferred` block ends. Process state by nature: a signal handler has no caller."""

    depth = 0
    pending = False


def _raise_terminated(signum, frame) -> None:
    if _Deferral.depth:
        _Deferral.pending = True
        return
    # the first SIGTERM starts the orderly stop; a second one (srun and mpiexec may both
    # forward the batch system's) must not interrupt the flush it is doing
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


@contextlib.contextmanager
def deferred():
    """Hold a SIGTERM until the block ends. For imports of C extensions: an exception
    raised inside ``import torch`` was seen to abort the process (SIGABRT, a traceback
    and exit 6 under mpiexec) instead of stopping it."""
    _Deferral.depth += 1
    try:
        yield
    finally:
        _Deferral.depth -= 1
        if not _Deferral.depth and _Deferral.pending:
            _Deferral.pending = False
            if signal.getsignal(signal.SIGTERM) is _raise_terminated:
                _raise_terminated(signal.SIGTERM, None)


def install():
    """Make SIGTERM raise :class:`Terminated` in the main thread; returns the previous
    handler for :func:`restore` (None where signals cannot be set: not the main thread)."""
    try:
        return signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread (a test harness): keep the default
        return None


IGNORE = signal.SIG_IGN
"""For :func:`restore` once the command's work is done and the process only exits."""


def restore(previous) -> None:
    """Put back what :func:`install` replaced (in-process callers such as tests)."""
    if previous is not None:
        try:
            signal.signal(signal.SIGTERM, previous)
        except ValueError:
            pass


def exit_code(exc: BaseException) -> int:
    """143 for SIGTERM, 130 for SIGINT."""
    return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED


def what(exc: BaseException) -> str:
    """The word for the user's line: ``terminated (SIGTERM)`` or ``interrupted``."""
    return "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
