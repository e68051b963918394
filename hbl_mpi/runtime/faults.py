"""Fault injection for tests (config keys ``fault_*``; all off by default).

Node faults (``fault_fail_nodes``, ``fault_nan_nodes``, ``fault_slow_nodes``) act inside
node work (``context.py``, ``trainer.py``) and must be *contained*: the node fails, its
subtree is skipped, the run goes on. A crash (``fault_crash_rank``) acts outside node
work and must be *fatal*: every rank exits promptly with a message, never a hang.
The crash lives here so the scheduler (rank 0) and the workers die the same three ways.
"""

from __future__ import annotations

import os
import signal
import sys
import time

CRASH_EXIT_STATUS = 17
"""Status of an injected ``exit`` crash (os._exit: no cleanup, no MPI_Finalize)."""


def maybe_crash(cfg, rank: int, finished: int) -> None:
    """Die the configured way once ``rank`` has finished ``fault_crash_after`` nodes.

    ``exit``: ``os._exit`` (as a C library calling exit() would); ``signal``: SIGKILL
    (as the OOM killer would); ``raise``: an exception outside node work (a bug).
    """
    if cfg.fault_crash_rank != rank or finished < cfg.fault_crash_after:
        return
    # the wall-clock time lets a test measure time-to-exit from the crash itself, whatever
    # the launcher's output forwarding delays
    print(f"hbl_mpi: rank {rank}: injected crash ({cfg.fault_crash_kind}) after {finished} nodes "
          f"at unix time {time.time():.3f}", file=sys.stderr, flush=True)
    if cfg.fault_crash_kind == "exit":
        os._exit(CRASH_EXIT_STATUS)
    if cfg.fault_crash_kind == "signal":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"injected exception outside node work on rank {rank}")


def check_fault_nodes(cfg, nodes) -> None:
    """Every node named by a ``fault_*_nodes`` key exists in the plan (``nodes``).

    A misspelt node would make a fault test pass without injecting anything.
    """
    from hbl_mpi.core.errors import InputError

    known = set(nodes)
    for key in ("fault_fail_nodes", "fault_nan_nodes", "fault_slow_nodes"):
        for node in getattr(cfg, key):
            if node not in known:
                raise InputError(f"config key {key!r} names node {node!r}, which is not a trained node "
                                 f"of this plan (nodes look like 1.2, 1.2.1; the root 1 does not train)")


def check_fault_rank(cfg, world_size: int) -> None:
    """``fault_crash_rank`` must name a rank of this job (it would silently never fire)."""
    from hbl_mpi.core.errors import InputError

    if cfg.fault_crash_rank >= world_size:
        raise InputError(f"config key 'fault_crash_rank' = {cfg.fault_crash_rank} but the job has "
                         f"{world_size} ranks (0..{world_size - 1})")
