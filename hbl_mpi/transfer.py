"""Model states between ranks: one contiguous buffer, MPI point-to-point, no pickling.

A ``ModelState`` is already one flat float32 tensor (``state.py``), so a fork is a tiny
int64 header (n_params, step, length) followed by one ``Isend`` of the buffer; the
receiver posts ``Irecv`` straight into its own training buffer (``TrainState.flat``).
No tensor is pickled, nothing touches the filesystem.

Waiting never spins a core: requests are completed with ``Test`` and a sleep back-off
(``Backoff``: 1 us doubling to 1 ms). With the pip ``mpich`` wheel a blocking ``Recv`` burns a
whole core while it waits (DESIGN §5); on a 2-core machine running 4 ranks that halves
everyone else's training speed. A holder that is training keeps its pending sends
moving by calling ``OutgoingStates.progress`` from the trainer's ``poll`` hook.

GPU tensors go directly when the MPI library is CUDA-aware (``cuda_aware()``), else
through one pinned host buffer per held state.
"""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from mpi4py import MPI

from hbl_mpi.runtime.messages import TAG_STATE_BASE, TAG_STATE_SPAN
from hbl_mpi.train.flat_state import ModelState

HEADER_LEN = 3  # n_params, step, number of float32 elements


def state_tags(transfer_id: int) -> tuple[int, int]:
    """(header tag, buffer tag) of one transfer: distinct for concurrent transfers."""
    base = TAG_STATE_BASE + 2 * (transfer_id % TAG_STATE_SPAN)
    return base, base + 1


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


_cuda_aware_cache: bool | None = None


def _loaded_mpi_libraries() -> list[str]:
    """Paths of the MPI libraries mapped into this process (mpi4py loads libmpi privately,
    so its symbols are not in the global namespace that ``ctypes.CDLL(None)`` sees)."""
    paths = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rsplit(None, 1)[-1]
                name = os.path.basename(path)
                if name.startswith(("libmpi.", "libmpi_", "libmpich")) and path not in paths:
                    paths.append(path)
    except OSError:
        pass
    return paths


def cuda_aware() -> bool:
    """Whether the MPI library takes CUDA device pointers.

    ``HBL_CUDA_AWARE=0|1`` overrides; otherwise ask ``MPIX_Query_cuda_support`` (Open MPI
    and MPICH both export it) in the libmpi this process loaded. False when unknown:
    staging through pinned host memory is always correct.
    """
    global _cuda_aware_cache
    env = os.environ.get("HBL_CUDA_AWARE")
    if env is not None:
        return env.strip() not in ("", "0", "false", "no")
    if _cuda_aware_cache is None:
        _cuda_aware_cache = False
        for path in _loaded_mpi_libraries():
            try:
                lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL)
                fn = lib.MPIX_Query_cuda_support
            except (AttributeError, OSError):
                continue
            fn.restype = ctypes.c_int
            _cuda_aware_cache = bool(fn())
            break
    return _cuda_aware_cache


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
