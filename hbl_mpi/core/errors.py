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
