"""User-facing errors: one line, exit code 2, no traceback.

Anything the user can fix (a config key, a data file, a CLI argument) raises
``InputError``; ``__main__`` turns it into ``hbl_mpi: error: <message>`` on stderr and
exit status 2. Under MPI, rank 0 prints it once and every rank exits with 2.
"""

from __future__ import annotations

EXIT_INPUT = 2
"""Exit status for bad input (config, data, arguments)."""
EXIT_PARTIAL = 3
"""Exit status of a run that completed but with failed or skipped nodes."""
EXIT_FATAL = 4
"""Exit status of a run aborted by a fatal error on some rank."""


class InputError(Exception):
    """Bad user input; the message is one line that names the problem."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def fatal_line(message: str, rank: int | None = None) -> str:
    """The one format of a fatal error's line on stderr: ``hbl_mpi: fatal: [rank R: ]message``.

    Operators grep job logs for it, and tests match it, so every fatal path formats it here.
    """
    where = f"rank {rank}: " if rank is not None else ""
    return f"hbl_mpi: fatal: {where}{message}"


def error_line(message: str) -> str:
    """The one format of an input error's line on stderr (exit 2): ``hbl_mpi: error: message``."""
    return f"hbl_mpi: error: {message}"
