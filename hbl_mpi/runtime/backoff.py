"""How a rank waits on MPI without burning a core: poll, then sleep with exponential back-off.

With the pip ``mpich`` wheel a blocking ``Recv`` spins a core; on a 2-core machine running
4 ranks that would starve the ranks doing real work. Every wait in the program (the
scheduler's, a worker's, a state transfer's, a group's gradient exchange) goes through this
one ``Backoff`` so they all trade latency for idle CPU the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from mpi4py import MPI


@dataclass
class Backoff:
    """Sleep 1 us, doubling to 1 ms, between polls; ``reset`` after any progress.

    The cap trades wake-up latency against idle CPU: at 1 ms an idle rank costs about 1 %
    of a core (asserted in tests/test_transfer_mpi.py) and reacts within 1 ms, the same
    latency as mpi4py.futures' default back-off. The start is tiny, as in mpi4py.futures
    (0, then cap/1024): a reply already on its way (an assignment right after a report)
    is caught by the first few polls (each sleep lasts at least the kernel's ~50 us timer
    slack) instead of after a 50 us, 100 us, ... ladder. Starting at 50 us instead gave
    2.2x fewer empty tasks/s in bench/schedule.py (1,250-1,420 vs 2,720-3,780), and the
    ramp to the cap still takes ~1 ms, so idle CPU is unchanged.
    """

    start: float = 1e-6
    limit: float = 1e-3
    delay: float = field(default=1e-6, init=False)

    def __post_init__(self):
        self.delay = self.start

    def sleep(self) -> None:
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, self.limit)

    def reset(self) -> None:
        self.delay = self.start


def wait_all(requests: list, poll: Callable[[], None] | None = None, backoff: Backoff | None = None) -> None:
    """Complete ``requests`` without spinning, calling ``poll`` between tests."""
    backoff = backoff or Backoff()
    while not MPI.Request.Testall(requests):
        if poll is not None:
            poll()
        backoff.sleep()
