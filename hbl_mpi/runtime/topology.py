"""Who is where: hosts, worker groups, local ranks, GPU binding.

Computed collectively at start-up and identical on every rank (an allgather of host
identities), so every rank reaches the same verdict on a bad ``group_size`` and exits
with the same error instead of hanging.

Groups are ``group_size`` consecutive worker ranks on one host (Horovod-style: a group
trains one model data-parallel over its own communicator). Rank 0 is the scheduler and
belongs to no group; with equal ranks per host, rank 0's host then has one worker too
few for ``group_size > 1``, so its last ``group_size - 1`` ranks stay idle (reported at
start) rather than making every multi-host group layout impossible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mpi4py import MPI

from hbl_mpi.core.errors import InputError
from hbl_mpi.runtime.liveness import PeerWatch, ProcessIdentity, identity, is_alive


@dataclass
class Topology:
    world_size: int
    rank: int
    host_of_rank: list[int]  # world rank -> host index
    local_rank: int  # rank within the host (shared-memory communicator)
    ranks_on_host: int
    groups: list[list[int]]  # group id -> world ranks (ascending)
    group_host: dict[int, int]
    procs: list[ProcessIdentity] = field(default_factory=list)  # world rank -> pid (liveness.py)
    visible: list[bool] = field(default_factory=list)  # world rank -> this rank saw its pid at start-up

    def peer_watch(self, interval: float = 1.0) -> PeerWatch:
        """The same-host processes this rank must notice dying (``liveness.py``): rank 0
        watches every worker, a worker (or idle rank) watches rank 0."""
        ranks = list(range(1, self.world_size)) if self.rank == 0 else [0]
        return PeerWatch.on_my_host(ranks, self.procs, self.host_of_rank, self.rank, interval,
                                    visible=self.visible)

    @property
    def group(self) -> int | None:
        for g, ranks in enumerate(self.groups):
            if self.rank in ranks:
                return g
        return None

    @property
    def index_in_group(self) -> int:
        return self.groups[self.group].index(self.rank)

    @property
    def is_leader(self) -> bool:
        return self.group is not None and self.index_in_group == 0


def group_layout(host_of_rank: list[int], group_size: int) -> list[list[int]]:
    """Split workers (ranks >= 1) into groups of ``group_size`` consecutive ranks per host.

    Pure function (tested without MPI). InputError when a host's workers do not divide.
    """
    if len(host_of_rank) < 2:
        raise InputError("the MPI runtime needs at least 2 ranks (rank 0 schedules); use --serial")
    by_host: dict[int, list[int]] = {}
    for r in range(1, len(host_of_rank)):
        by_host.setdefault(host_of_rank[r], []).append(r)
    groups: list[list[int]] = []
    for host in sorted(by_host):
        ranks = by_host[host]
        if len(ranks) % group_size:
            if host == host_of_rank[0] and (len(ranks) + 1) % group_size == 0:
                # rank 0 took one slot of this host: its last group_size - 1 ranks idle
                ranks = ranks[: len(ranks) - len(ranks) % group_size]
            else:
                raise InputError(
                    f"group_size = {group_size} does not divide the {len(ranks)} worker ranks on host "
                    f"{host} (rank 0 is the scheduler and takes no group)"
                )
        groups.extend(ranks[i : i + group_size] for i in range(0, len(ranks), group_size))
    if not groups:
        raise InputError(f"group_size = {group_size} leaves no complete group of worker ranks")
    return groups


def idle_ranks(host_of_rank: list[int], groups: list[list[int]]) -> list[int]:
    """Worker ranks in no group (rank 0's host when its workers don't divide)."""
    grouped = {r for g in groups for r in g}
    return [r for r in range(1, len(host_of_rank)) if r not in grouped]


def build_topology(comm: MPI.Comm, group_size: int) -> Topology:
    """Collective: every rank calls it and gets the same layout (or the same InputError)."""
    node_comm = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    local_rank, ranks_on_host = node_comm.Get_rank(), node_comm.Get_size()
    leader = node_comm.bcast(comm.Get_rank(), root=0)
    node_comm.Free()
    leaders = comm.allgather(leader)
    hosts = {ldr: i for i, ldr in enumerate(sorted(set(leaders)))}
    host_of_rank = [hosts[ldr] for ldr in leaders]
    procs = comm.allgather(identity())
    visible = [is_alive(p) for p in procs]  # every rank is alive here: unseen = another namespace
    groups = group_layout(host_of_rank, group_size)
    return Topology(
        world_size=comm.Get_size(), rank=comm.Get_rank(), host_of_rank=host_of_rank,
        local_rank=local_rank, ranks_on_host=ranks_on_host, groups=groups,
        group_host={g: host_of_rank[ranks[0]] for g, ranks in enumerate(groups)}, procs=procs,
        visible=visible,
    )


def bind_device(device: str, local_rank: int) -> str:
    """``cuda`` -> ``cuda:<local_rank % n_gpus>`` (one GPU per rank by local rank)."""
    import torch

    if device in ("cuda", "auto") and torch.cuda.is_available():
        idx = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(idx)
        return f"cuda:{idx}"
    return "cpu" if device == "auto" else device
