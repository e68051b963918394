"""Model states between ranks: one contiguous buffer, MPI point-to-point, no pickling.

A ``ModelState`` is already one flat float32 tensor (``state.py``), so a fork is a tiny
int64 header (n_params, step, length) followed by one ``Isend`` of the buffer; the
receiver posts ``Irecv`` straight into its own training buffer (``TrainState.flat``).
No tensor is pickled, nothing touches the filesystem.

Waiting never spins a core: requests are completed with ``Test`` and a sleep back-off
(``Backoff``: 1 us doubling to 1 ms). With the pip ``mpich`` wheel a blocking ``Recv`` burns a
whole core while it waits (docs/design.md §5); on a 2-core machine running 4 ranks that halves
everyone else's training speed. A holder that is training keeps its pending sends
moving by calling ``OutgoingStates.progress`` from the trainer's ``poll`` hook.

GPU tensors go directly when the MPI library is CUDA-aware (``cuda_aware()``), else
through one pinned host buffer per held state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from mpi4py import MPI

from hbl_mpi.runtime.backoff import Backoff, wait_all
from hbl_mpi.runtime.cuda_mpi import cuda_aware
from hbl_mpi.runtime.messages import TAG_STATE_BASE, TAG_STATE_SPAN
from hbl_mpi.train.flat_state import ModelState

HEADER_LEN = 3  # n_params, step, number of float32 elements


def state_tags(transfer_id: int) -> tuple[int, int]:
    """(header tag, buffer tag) of one transfer: distinct for concurrent transfers."""
    base = TAG_STATE_BASE + 2 * (transfer_id % TAG_STATE_SPAN)
    return base, base + 1


def _mpi_buffer(t: torch.Tensor):
    """An mpi4py buffer spec for a contiguous float32 tensor (host or CUDA-aware device)."""
    if t.device.type == "cpu":
        return [t.numpy(), MPI.FLOAT]
    return [t, MPI.FLOAT]  # via __cuda_array_interface__ / DLPack


def _host_copy(t: torch.Tensor) -> torch.Tensor:
    """A pinned host copy of a device tensor, for MPI libraries that are not CUDA-aware."""
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=torch.cuda.is_available())
    host.copy_(t)
    return host


@dataclass
class HeldState:
    """A finished parent's state kept for forking, plus the sends still in flight."""

    state: ModelState
    staged: torch.Tensor | None = None  # pinned host copy when the device is not MPI-reachable
    requests: list = field(default_factory=list)
    release_requested: bool = False
    sends: int = 0
    send_seconds: float = 0.0

    def send_buffer(self) -> torch.Tensor:
        flat = self.state.flat
        if flat.device.type == "cpu" or cuda_aware():
            return flat
        if self.staged is None:
            self.staged = _host_copy(flat)
        return self.staged


class OutgoingStates:
    """States this rank holds for its finished parents and the sends it has posted."""

    def __init__(self, comm: MPI.Comm):
        self.comm = comm
        self.held: dict[str, HeldState] = {}

    def hold(self, node: str, state: ModelState) -> None:
        self.held[node] = HeldState(state)

    def get(self, node: str) -> ModelState:
        if node not in self.held:
            raise KeyError(f"this rank does not hold the state of node {node}")
        return self.held[node].state

    def send(self, node: str, dest: int, transfer_id: int) -> None:
        """Post the non-blocking send of ``node``'s state to world rank ``dest``."""
        h = self.held[node]
        buf = h.send_buffer()
        header = np.array([h.state.n_params, h.state.step, buf.numel()], dtype=np.int64)
        htag, btag = state_tags(transfer_id)
        h.requests.append(self.comm.Isend([header, MPI.INT64_T], dest=dest, tag=htag))
        h.requests.append(self.comm.Isend(_mpi_buffer(buf), dest=dest, tag=btag))
        h.requests.append(header)  # keep the header alive until the send completes
        h.sends += 1

    def release(self, node: str) -> None:
        """No more sends of ``node`` will be asked; free it once pending sends finish."""
        if node in self.held:
            self.held[node].release_requested = True
        self.progress()

    def progress(self) -> None:
        """Test pending sends (drives MPI progress) and free released, completed states."""
        for node in list(self.held):
            h = self.held[node]
            reqs = [r for r in h.requests if isinstance(r, MPI.Request)]
            if reqs and MPI.Request.Testall(reqs):
                h.requests.clear()
            if h.release_requested and not h.requests:
                del self.held[node]

    def pending(self) -> bool:
        return any(h.requests for h in self.held.values())

    def drain(self) -> None:
        """Wait (without spinning) until every posted send completed."""
        backoff = Backoff()
        while self.pending():
            self.progress()
            if self.pending():
                backoff.sleep()

    @property
    def nbytes(self) -> int:
        return sum(h.state.nbytes for h in self.held.values())


def recv_state_into(
    comm: MPI.Comm,
    target: torch.Tensor,
    source: int,
    transfer_id: int,
    poll: Callable[[], None] | None = None,
) -> tuple[int, int]:
    """Receive a state from world rank ``source`` straight into ``target`` (a flat buffer).

    Returns (n_params, step). ``target`` must have the sender's length (same model).
    """
    htag, btag = state_tags(transfer_id)
    header = np.zeros(HEADER_LEN, dtype=np.int64)
    staged = None
    if target.device.type == "cpu" or cuda_aware():
        dst = target
    else:
        staged = torch.empty(target.shape, dtype=target.dtype, pin_memory=torch.cuda.is_available())
        dst = staged
    reqs = [comm.Irecv([header, MPI.INT64_T], source=source, tag=htag),
            comm.Irecv(_mpi_buffer(dst), source=source, tag=btag)]
    wait_all(reqs, poll)
    n_params, step, length = (int(x) for x in header)
    if length != target.numel():
        raise RuntimeError(
            f"state from rank {source} has {length} values, this model needs {target.numel()}"
        )
    if staged is not None:
        target.copy_(staged, non_blocking=False)
    return n_params, step
