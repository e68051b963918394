"""One handshake for "rank 0 decides, every rank learns the verdict": never a hang.

Reading the config and data, judging a restart or taking OUT's lock happen on rank 0
alone; if any of them fails there, every other rank must end too, with the same exit
code, instead of waiting in a collective that rank 0 never joins. The decision travels as
data (like mpi4py.futures' results): a :class:`Verdict` with its outcome and one line.
"""

from __future__ import annotations

import enum
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from hbl_mpi.core.errors import EXIT_FATAL, EXIT_INPUT, InputError, error_line, fatal_line


class Outcome(enum.Enum):
    OK = "ok"
    INPUT_ERROR = "input_error"  # the user's to fix: exit 2
    FATAL = "fatal"  # not the user's fault: exit 4


@dataclass
class Verdict:
    """What rank 0 decided. ``value``: rank 0's own result on rank 0; on the other ranks
    what ``share`` made of it (None by default); ``message``: the failure's one line."""

    outcome: Outcome
    value: Any = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    @property
    def exit_code(self) -> int:
        return {Outcome.OK: 0, Outcome.INPUT_ERROR: EXIT_INPUT, Outcome.FATAL: EXIT_FATAL}[self.outcome]

    def line(self) -> str:
        return error_line(self.message) if self.outcome is Outcome.INPUT_ERROR else fatal_line(self.message, rank=0)


def decide_on_rank0(comm, decide: Callable[[], Any], *, share: Callable[[Any], Any] | None = None,
                    before_bcast: Callable[[], None] | None = None) -> Verdict:
    """Run ``decide`` on rank 0 and broadcast its verdict; every rank returns it.

    ``share(value)`` is what the other ranks receive (e.g. the config and data, never a
    lock); ``before_bcast`` runs on every rank before the broadcast (waiting there without
    spinning a core). A failure is printed once, by rank 0.
    """
    rank = comm.Get_rank()
    verdict = None
    if rank == 0:
        try:
            verdict = Verdict(Outcome.OK, decide())
        except InputError as e:
            verdict = Verdict(Outcome.INPUT_ERROR, message=str(e))
        except Exception as e:  # not the user's fault: still, every rank ends, none waits
            traceback.print_exc()
            verdict = Verdict(Outcome.FATAL, message=f"{type(e).__name__}: {e}")
    if before_bcast is not None:
        before_bcast()
    if rank == 0:
        sent = Verdict(verdict.outcome, share(verdict.value) if share and verdict.ok else None, verdict.message)
        comm.bcast(sent, root=0)
    else:
        verdict = comm.bcast(None, root=0)
    if not verdict.ok and rank == 0:
        print(verdict.line(), file=sys.stderr, flush=True)
    return verdict
