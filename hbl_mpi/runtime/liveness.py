"""Noticing a rank that died without a word, for launchers that do not notice it for us.

MPICH's hydra ``mpiexec`` (the pip ``mpich`` wheel), Open MPI and jsrun tear the whole
job down when one rank exits or is killed, so no rank waits for a dead one. Others do
not: ``srun`` without ``--kill-on-bad-exit`` (Slurm's default unless ``KillOnBadExit``
is set), hydra with ``-disable-auto-cleanup``. There a worker killed by the OOM killer
leaves rank 0 waiting for its report forever, and a dead rank 0 leaves every worker
waiting for its next order: the allocation burns until the wall-clock limit.

Plain MPI-3 cannot tell a dead rank from a slow one, and a heartbeat with a timeout
would have to outlast the longest blocking step (building the device tables, reading a
checkpoint, a slow peer in an allreduce): minutes, and a false alarm kills a healthy
1,000-node run. Process ids need no timeout: at start-up every rank publishes its pid
and the kernel's start time of that pid (``build_topology``), and a rank checks, at most
once a second, that the processes it waits for *on its own host* still exist. Rank 0
watches its host's workers; workers on rank 0's host watch rank 0. A rank on another host
is left to the launcher (use ``srun --kill-on-bad-exit=1``).

A pid that is gone, a zombie, or reused by another process (different start time) is
dead. A pid rank 0 cannot see at start-up (another PID namespace) is not watched, so a
container layout never turns into a false alarm.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class ProcessIdentity:
    """A process as the kernel names it: the pid and its start time (``""`` if unknown)."""

    pid: int
    start: str = ""


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` after the command name (which may hold spaces and parentheses)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def identity(pid: int | None = None) -> ProcessIdentity:
    """This process's (or ``pid``'s) identity; the start time is field 22 of its stat line."""
    pid = os.getpid() if pid is None else pid
    fields = _stat_fields(pid)
    return ProcessIdentity(pid, fields[19] if fields and len(fields) > 19 else "")


def is_alive(who: ProcessIdentity) -> bool:
    """False when the process has exited (gone or a zombie) or its pid now names another."""
    try:
        os.kill(who.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    fields = _stat_fields(who.pid)
    if fields is None:  # gone since the signal, or no procfs (macOS): then signal 0 is all we have
        return not os.path.isdir("/proc/self")
    if fields[0] in ("Z", "X", "x"):
        return False
    return not who.start or len(fields) <= 19 or fields[19] == who.start


@dataclass
class PeerWatch:
    """Ranks whose processes one rank watches; ``dead()`` checks at most every ``interval`` s."""

    peers: dict[int, ProcessIdentity]
    interval: float = 1.0
    clock: Callable[[], float] = time.monotonic
    _next: float = field(default=0.0, init=False)

    @classmethod
    def on_my_host(cls, ranks: list[int], procs: list[ProcessIdentity], host_of_rank: list[int],
                   me: int, interval: float = 1.0, visible: list[bool] | None = None) -> "PeerWatch":
        """Watch those of ``ranks`` on this rank's host that this rank can see.

        ``visible`` (``Topology.visible``) says which pids this rank saw alive when every rank
        had just published its pid: the only moment "not visible" surely means "another
        PID namespace". Without it, visibility is judged now, which takes a peer that has
        *already died* for an invisible one and never reports it (a worker that exits right
        after its last report left rank 0 in the final barrier for good).
        """
        peers = {}
        if procs:
            for r in ranks:
                seen = visible[r] if visible is not None else is_alive(procs[r])
                if r != me and host_of_rank[r] == host_of_rank[me] and seen:
                    peers[r] = procs[r]
        return cls(peers, interval)

    def dead(self) -> dict[int, ProcessIdentity]:
        """Ranks found dead by this check (each reported once); {} between checks."""
        if not self.peers:
            return {}
        now = self.clock()
        if now < self._next:
            return {}
        self._next = now + self.interval
        gone = {r: who for r, who in self.peers.items() if not is_alive(who)}
        for r in gone:
            del self.peers[r]
        return gone


def describe_death(rank: int, who: ProcessIdentity) -> str:
    """The one-line cause, as far as a process that is not the parent can know it."""
    return (f"rank {rank} (pid {who.pid}) is gone: it exited or was killed (a signal, the OOM "
            f"killer, os._exit) without reporting, and the launcher did not end the job")


class RankGone(RuntimeError):
    """A watched rank's process no longer exists: the job must end (``comm.Abort``)."""


# ----------------------------------------------------------------------------- silence
# A stopped worker (SIGSTOP, a hung file system, a debugger) is alive by every test above:
# only time tells. The rule is pure (times in, verdicts out) so it is tested without MPI.

STALL_FACTOR = 10.0
"""Automatic limit: this many times the node's expected time (its work at the median rate)."""
STALL_FLOOR_S = 600.0
"""Automatic limit: never less than this, however fast the finished nodes were."""


@dataclass(frozen=True)
class StallRule:
    """When a worker that has not reported counts as stalled (config key ``stall_seconds``).

    ``seconds > 0``: a fixed limit per node. ``seconds == 0`` (the default): ``STALL_FACTOR``
    times the node's *expected* time, with a floor of ``STALL_FLOOR_S``. A node's work is
    its training rows times its epoch budget, and the expected time is that work at the
    median seconds-per-unit of the nodes finished so far, so a big or long node is not
    judged by the small ones. Until a node has finished there is nothing to compare with:
    the automatic rule then waits (set ``stall_seconds`` to guard the first wave too).
    """

    seconds: float = 0.0
    factor: float = STALL_FACTOR
    floor: float = STALL_FLOOR_S

    def limit(self, work: float, rates: list[float]) -> float | None:
        """Seconds a node of ``work`` units may run without a report (None: no limit yet)."""
        if self.seconds > 0:
            return self.seconds
        if not rates:
            return None
        return max(self.floor, self.factor * max(work, 1.0) * statistics.median(rates))


@dataclass(frozen=True)
class Stall:
    """A running node whose group has been silent longer than its limit."""

    group: int
    node: str
    silent_s: float
    limit_s: float


def stalled(now: float, running: dict[int, tuple[str, float, float]], rule: StallRule,
            rates: list[float]) -> list[Stall]:
    """The groups of ``running`` (group -> (node, start time, work)) silent beyond their limit."""
    out = []
    for group, (node, start, work) in sorted(running.items()):
        limit = rule.limit(work, rates)
        if limit is not None and now - start > limit:
            out.append(Stall(group, node, now - start, limit))
    return out


def process_state(who: ProcessIdentity) -> str:
    """``/proc`` state letter of a process (``T``: stopped), ``""`` when not visible."""
    fields = _stat_fields(who.pid)
    return fields[0] if fields else ""


class WorkerStalled(RuntimeError):
    """A worker has neither reported nor answered within its limit: the job must end."""
