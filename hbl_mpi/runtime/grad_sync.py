"""A rank group's gradient sum: bucketed non-blocking allreduce overlapped with backward.

The shape is Horovod's ``DistributedOptimizer`` and torch DDP's reducer, on the group's
MPI communicator: a hook on every parameter notes when its gradient is accumulated; as
soon as every parameter of a *bucket* (a contiguous slice of ``TrainState.grad``, filled
in backward order) has its gradient, the bucket's ``Iallreduce`` is posted while
backward goes on with the layers below. ``wait`` (called before the optimizer step)
posts whatever is left and completes them all. The result is the same SUM as one
allreduce of the whole flat gradient: with two ranks bit for bit (a + b is a + b in
any order), with more up to float reassociation, as any allreduce.

Rules that keep a group from deadlocking or mixing buckets:

* buckets are posted strictly in bucket order (0, 1, 2, ...), whatever order the hooks
  fire in: MPI requires every rank of a communicator to start its collectives in the
  same order, and autograd's order across parallel branches (the Uno encoders) is not a
  promise;
* every bucket is posted exactly once per step, also when some parameter got no
  gradient (``wait`` posts the rest);
* while posting, the hooks ``Test`` the requests in flight: MPICH only moves a
  non-blocking collective forward inside an MPI call, so this is what makes the overlap
  real without a progress thread (which would take a core from training).

On the CPU the group also shares the optimizer step (``Reduction.SHARDED``, ZeRO stage 1 as
in DeepSpeed and torch's ``ZeroRedundancyOptimizer``): each bucket is *reduce-scattered*
instead of allreduced, so rank ``r`` holds the summed gradient of part ``r`` of every
bucket; it runs Adam on that part only and the updated weights are allgathered, bucket
by bucket. Reduce-scatter + allgather move the same bytes as one allreduce (that is how
an allreduce of large buffers is done), but each rank does 1/size of Adam's work. For
the paper model (16.2 M parameters) on one CPU core, torch's Adam step took 86 ms of a
279 ms group step, the single biggest cost that DDP repeats on every rank; this rank's
share, run bucket by bucket, took 21 ms of a 187 ms step (BENCHMARKS §6: part of that
gain is from running Adam in bucket-sized slices, which stay in cache, not only from the
halving). Adam's moments then stay whole only for each rank's own parts;
``gather_state`` (the trainer calls it at every epoch end, before anything reads the
state) allgathers them, so every snapshot, fork, checkpoint and result sees the whole,
rank-identical state. The weights are bit-identical on every rank of the group by
construction (each element is computed once, by its owner, and copied). Device tensors
keep ``Reduction.ALLREDUCE`` (DDP's path): on a GPU Adam is one fused kernel and whether
sharding pays there has not been measured (no GPU here).

GPU tensors go to MPI directly when the MPI library is CUDA-aware
(``runtime.cuda_mpi.cuda_aware``), else through one pinned host buffer per bucket (copied out
after the bucket's gradients are complete on the stream, copied back after the wait):
``Staging``. The same rule serves ``GroupComm.allreduce_`` (the epoch's loss and
per-cell sums), so a GPU group on an MPI library that is not CUDA-aware works.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from enum import Enum

import torch
from torch.optim.adam import adam as torch_adam
from mpi4py import MPI

from hbl_mpi.train.flat_state import TrainState
from hbl_mpi.runtime.backoff import Backoff
from hbl_mpi.runtime.cuda_mpi import cuda_aware

FIRST_BUCKET_BYTES = 1 << 20
"""The first bucket is small (DDP: 1 MB) so its allreduce starts early in backward."""
BUCKET_BYTES = 25 << 20
"""Later buckets (DDP's ``bucket_cap_mb`` = 25): few enough messages to amortise the
per-call latency, small enough that the last one left after backward is short."""


class Staging(Enum):
    """How a tensor reaches MPI."""

    DIRECT = "direct"  # host memory, or device memory with a CUDA-aware MPI
    HOST = "host"  # through a pinned host copy (device memory, MPI not CUDA-aware)


class Reduction(Enum):
    """What a group does with its gradient before the weights move."""

    ALLREDUCE = "allreduce"  # every rank gets the whole sum and runs all of Adam
    SHARDED = "sharded"  # reduce-scatter; each rank runs Adam on its part; allgather weights


def reduction_for(grad: torch.Tensor, staging: Staging) -> Reduction:
    """The one rule: host-memory gradients (CPU training) share Adam; device ones allreduce."""
    return Reduction.SHARDED if grad.device.type == "cpu" and staging is Staging.DIRECT else Reduction.ALLREDUCE


def split_counts(n: int, size: int) -> list[int]:
    """Element counts of ``size`` contiguous parts of ``n`` elements (the first ``n % size``
    one larger), as ``np.array_split`` cuts them. Pure."""
    return [n // size + (1 if r < n % size else 0) for r in range(size)]


def staging_for(device: torch.device | str) -> Staging:
    """The one rule: host tensors and CUDA-aware MPI go direct, other device tensors stage."""
    if torch.device(device).type == "cpu" or cuda_aware():
        return Staging.DIRECT
    return Staging.HOST


def _mpi_type(t: torch.Tensor):
    if t.dtype == torch.float32:
        return MPI.FLOAT
    if t.dtype == torch.float64:
        return MPI.DOUBLE
    raise TypeError(f"allreduce of {t.dtype} tensors is not supported")


def _buffer(t: torch.Tensor):
    """An mpi4py buffer spec of a contiguous tensor (host, or device through CUDA-aware MPI)."""
    return [t.numpy() if t.device.type == "cpu" else t, _mpi_type(t)]


def _host_buffer(like: torch.Tensor) -> torch.Tensor:
    return torch.empty(like.shape, dtype=like.dtype, pin_memory=torch.cuda.is_available())


def _device_synchronize(t: torch.Tensor) -> None:
    if t.device.type == "cuda":
        torch.cuda.current_stream(t.device).synchronize()


class GroupComm:
    """The data-parallel group as the trainer sees it: size, rank, in-place SUM allreduce.

    ``staging`` forces a path (tests run the host-staging path on CPU tensors); by
    default each tensor takes ``staging_for(its device)``. ``reduction`` likewise forces
    the gradient's reduction (default ``reduction_for``).
    """

    def __init__(self, comm: MPI.Comm, staging: Staging | None = None, reduction: Reduction | None = None):
        self.comm = comm
        self.size = comm.Get_size()
        self.rank = comm.Get_rank()
        self.staging = staging
        self.reduction = reduction  # None: ``reduction_for`` the gradient (tests force either)

    def staging_of(self, t: torch.Tensor) -> Staging:
        return self.staging if self.staging is not None else staging_for(t.device)

    def allreduce_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` (contiguous float32/float64) over the group, in place."""
        if self.staging_of(t) is Staging.HOST:
            host = _host_buffer(t)
            host.copy_(t)
            self.comm.Allreduce(MPI.IN_PLACE, _buffer(host), op=MPI.SUM)
            t.copy_(host)
        else:
            _device_synchronize(t)
            self.comm.Allreduce(MPI.IN_PLACE, _buffer(t), op=MPI.SUM)
        return t

    def gradient_sync(self, ts: TrainState, **kwargs) -> "GradSync":
        """The overlapped gradient allreduce of ``ts`` on this group: the one already attached
        (node after node on the same ``TrainState``), else a new one."""
        if ts.grad_sync is not None and ts.grad_sync.group is self and not kwargs:
            return ts.grad_sync
        return GradSync.attach(ts, self, **kwargs)


def plan_buckets(sizes: list[int], first_cap: int, cap: int) -> list[list[int]]:
    """Parameter indices per bucket, filled in *reverse* parameter order (backward order).

    ``sizes`` are element counts in the flat buffer's order (consecutive offsets), so each
    bucket is one contiguous slice of the flat gradient. A bucket closes once it holds
    ``first_cap`` (the first) or ``cap`` (the others) elements or more; a parameter is
    never split. Pure (tested without MPI).
    """
    if first_cap < 1 or cap < 1:
        raise ValueError("bucket capacities must be >= 1 element")
    buckets: list[list[int]] = []
    current: list[int] = []
    filled = 0
    for i in reversed(range(len(sizes))):
        current.append(i)
        filled += sizes[i]
        if filled >= (first_cap if not buckets else cap):
            buckets.append(current)
            current, filled = [], 0
    if current:
        buckets.append(current)
    return buckets


@dataclass
class _Bucket:
    lo: int  # slice [lo, hi) of the flat gradient
    hi: int
    n_params: int
    missing: int = 0  # parameters whose gradient has not arrived this step
    host: torch.Tensor | None = None  # pinned staging buffer (Staging.HOST)
    event: object = None  # CUDA event: the bucket's gradients (and host copy) are complete
    request: MPI.Request | None = None
    # Reduction.SHARDED: the bucket cut into one contiguous part per rank
    counts: list[int] = field(default_factory=list)  # elements of each rank's part
    displs: list[int] = field(default_factory=list)  # offsets of the parts within [lo, hi)
    summed: torch.Tensor | None = None  # this rank's part of the summed gradient

    def part(self, rank: int) -> tuple[int, int]:
        """[lo, hi) of ``rank``'s part in the flat buffer."""
        a = self.lo + self.displs[rank]
        return a, a + self.counts[rank]


@dataclass
class SyncStats:
    """Where a step's allreduce time went (bench/group.py reads it)."""

    steps: int = 0
    posted_in_backward: int = 0  # buckets posted by a hook, i.e. overlapped with backward
    posted_in_wait: int = 0
    wait_s: float = 0.0  # time the step spent waiting for the group's messages
    adam_s: float = 0.0  # time in this rank's share of Adam (Reduction.SHARDED)
    gathers: int = 0  # ``gather_state`` calls (one per epoch end, Reduction.SHARDED)
    gather_s: float = 0.0  # time in them (the moments' allgather; not in wait_s)


@dataclass
class GradSync:
    """Bucketed, overlapped reduction of ``ts.grad`` over ``group``; see the module doc."""

    ts: TrainState
    group: GroupComm
    buckets: list[_Bucket]
    staging: Staging
    reduction: Reduction = Reduction.ALLREDUCE
    stats: SyncStats = field(default_factory=SyncStats)
    _bucket_of: dict[int, int] = field(default_factory=dict)  # id(param) -> bucket index
    _handles: list = field(default_factory=list)
    _next: int = 0  # the next bucket to post (posting is in bucket order)
    _hooks_may_post: bool = True

    @classmethod
    def attach(cls, ts: TrainState, group: GroupComm, bucket_bytes: int = BUCKET_BYTES,
               first_bucket_bytes: int = FIRST_BUCKET_BYTES) -> "GradSync":
        """Hook every parameter of ``ts.module``; detaches the sync previously attached to ``ts``
        (a ``TrainState`` is reused node after node: hooks must never pile up)."""
        old = ts.grad_sync
        if old is not None:
            old.detach()
        params = list(ts.module.parameters())
        item = ts.grad.element_size()
        plan = plan_buckets([p.numel() for p in params], max(1, first_bucket_bytes // item),
                            max(1, bucket_bytes // item))
        staging = group.staging_of(ts.grad)
        reduction = group.reduction or reduction_for(ts.grad, staging)
        if reduction is Reduction.SHARDED:
            if staging is Staging.HOST:
                raise ValueError("the sharded optimizer step needs gradients MPI can read directly")
            _check_plain_adam(ts.optimizer)
        buckets = []
        for members in plan:
            lo = min(ts.offsets[i] for i in members)
            hi = max(ts.offsets[i] + params[i].numel() for i in members)
            host = _host_buffer(ts.grad[lo:hi]) if staging is Staging.HOST else None
            b = _Bucket(lo, hi, len(members), missing=len(members), host=host)
            if reduction is Reduction.SHARDED:
                b.counts = split_counts(hi - lo, group.size)
                b.displs = [0, *itertools.accumulate(b.counts[:-1])]
                b.summed = torch.empty(b.counts[group.rank], dtype=ts.grad.dtype, device=ts.grad.device)
            buckets.append(b)
        sync = cls(ts, group, buckets, staging, reduction)
        for b, members in enumerate(plan):
            for i in members:
                sync._bucket_of[id(params[i])] = b
        # hooks run on autograd's device thread for CUDA tensors: they may call MPI only when
        # the library allows calls from another thread (else ``wait`` posts everything)
        sync._hooks_may_post = ts.grad.device.type == "cpu" or MPI.Query_thread() >= MPI.THREAD_SERIALIZED
        sync._handles = [p.register_post_accumulate_grad_hook(sync._on_grad) for p in params]
        ts.grad_sync = sync
        return sync

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self.ts.grad_sync is self:
            self.ts.grad_sync = None

    # ---- during backward ---------------------------------------------------------
    def _on_grad(self, param: torch.Tensor) -> None:
        b = self.buckets[self._bucket_of[id(param)]]
        b.missing -= 1
        if b.missing == 0:
            self._complete_on_device(b)
        if self._hooks_may_post:
            self._post_ready(in_backward=True)

    def _complete_on_device(self, b: _Bucket) -> None:
        """The bucket's gradients are all accumulated: stage them out / mark the stream."""
        grad = self.ts.grad[b.lo:b.hi]
        on_gpu = grad.device.type == "cuda"
        if b.host is not None:
            b.host.copy_(grad, non_blocking=on_gpu)
        if on_gpu:  # MPI may read the bytes only once the stream has written them
            b.event = torch.cuda.Event()
            b.event.record()

    def _post(self, b: _Bucket) -> None:
        comm = self.group.comm
        if self.reduction is Reduction.SHARDED:
            b.request = comm.Ireduce_scatter(_buffer(self.ts.grad[b.lo:b.hi]), _buffer(b.summed),
                                             recvcounts=b.counts, op=MPI.SUM)
            return
        buf = b.host if b.host is not None else self.ts.grad[b.lo:b.hi]
        b.request = comm.Iallreduce(MPI.IN_PLACE, _buffer(buf), op=MPI.SUM)

    def _post_ready(self, in_backward: bool) -> None:
        """Post the ready buckets in order, then drive the requests in flight."""
        while self._next < len(self.buckets):
            b = self.buckets[self._next]
            if b.missing > 0 or (b.event is not None and not b.event.query()):
                break
            self._post(b)
            self._next += 1
            self.stats.posted_in_backward += 1
        inflight = [b.request for b in self.buckets[: self._next] if b.request is not None]
        if inflight:
            MPI.Request.Testall(inflight)

    def _post_rest(self) -> None:
        """Post the buckets no hook posted (in order); a parameter without a gradient this
        step still counts, as zeros."""
        for b in self.buckets[self._next :]:
            if b.missing > 0:
                self._complete_on_device(b)
            if b.event is not None:
                b.event.synchronize()
            self._post(b)
            self.stats.posted_in_wait += 1
        self._next = len(self.buckets)

    def _complete(self, requests: list, drive: list | None = None) -> float:
        """Wait for ``requests`` without spinning; each poll also tests ``drive`` (requests
        that must move on meanwhile but need not finish: MPICH progresses only inside calls).
        Returns the seconds waited."""
        t0 = time.perf_counter()
        backoff = Backoff()
        while not MPI.Request.Testall(requests):
            if drive:
                MPI.Request.Testall(drive)
            backoff.sleep()
        return time.perf_counter() - t0

    def _reset(self) -> None:
        for b in self.buckets:
            b.missing, b.event, b.request = b.n_params, None, None
        self._next = 0
        self.stats.steps += 1

    # ---- before the optimizer step -----------------------------------------------
    def wait(self) -> None:
        """Complete this step's sum (``Reduction.ALLREDUCE``): post the rest, wait, unstage."""
        if self.reduction is not Reduction.ALLREDUCE:
            raise RuntimeError("a sharded group sums only its parts of the gradient: call step()")
        self._post_rest()
        self.stats.wait_s += self._complete([b.request for b in self.buckets])
        for b in self.buckets:
            if b.host is not None:
                self.ts.grad[b.lo:b.hi].copy_(b.host, non_blocking=True)
        self._reset()

    def step(self) -> None:
        """Complete this step: the group's gradient sum and the optimizer step on it.

        ``Reduction.ALLREDUCE``: ``wait`` then every rank runs Adam on the whole buffer.
        ``Reduction.SHARDED``: bucket by bucket, in bucket order (every rank starts its
        collectives in the same order): wait for the bucket's reduce-scatter, run Adam on
        this rank's part, post the allgather of the updated weights; then wait for them.
        """
        if self.reduction is Reduction.ALLREDUCE:
            self.wait()
            self.ts.optimizer.step()
            return
        self._post_rest()
        me = self.group.rank
        opt = self.ts.optimizer
        step_t = opt.state[self.ts.param]["step"]
        flat = self.ts.flat
        gathers = []
        for b in self.buckets:
            self.stats.wait_s += self._complete([b.request], drive=gathers)
            a, z = b.part(me)
            t0 = time.perf_counter()
            if z > a:
                adam_slice(opt, flat, self.ts.n_params, a, z, b.summed, step_t)
            self.stats.adam_s += time.perf_counter() - t0
            gathers.append(self._gather(b, 0))
        step_t += 1  # Adam's count, once per step (each slice stepped a copy of it)
        self.stats.wait_s += self._complete(gathers)
        self._reset()

    def gather_state(self) -> None:
        """Make Adam's moments whole on every rank (``Reduction.SHARDED`` updates each rank's
        parts only); a no-op for ``Reduction.ALLREDUCE``. Call before the state is read."""
        if self.reduction is not Reduction.SHARDED:
            return
        P = self.ts.n_params
        requests = [self._gather(b, base) for base in (P, 2 * P) for b in self.buckets]  # exp_avg, exp_avg_sq
        self.stats.gather_s += self._complete(requests)
        self.stats.gathers += 1

    def _gather(self, b: _Bucket, base: int) -> MPI.Request:
        """In-place allgather of bucket ``b``'s parts in the flat region starting at ``base``
        (0: weights, n_params: exp_avg, 2 n_params: exp_avg_sq): each rank gives its own."""
        flat = self.ts.flat
        return self.group.comm.Iallgatherv(
            MPI.IN_PLACE, [flat[base + b.lo:base + b.hi].numpy(), (b.counts, b.displs), _mpi_type(flat)])


def _check_plain_adam(opt: torch.optim.Optimizer) -> None:
    """``adam_slice`` reproduces the plain Adam ``TrainState`` builds; refuse anything else
    once, when the sync is built, not on every step."""
    g = opt.param_groups[0]
    if not isinstance(opt, torch.optim.Adam) or g["amsgrad"] or g["maximize"] \
            or g.get("decoupled_weight_decay", False):
        raise ValueError("the sharded optimizer step supports the plain Adam TrainState builds")


def adam_slice(opt: torch.optim.Adam, flat: torch.Tensor, n_params: int, a: int, z: int,
               grad: torch.Tensor, step_t: torch.Tensor) -> None:
    """torch's own Adam (the single-tensor path ``TrainState``'s optimizer takes) on elements
    [a, z) of the flat weights and moments, with the summed gradient ``grad`` of them.

    ``step_t`` (the optimizer's step count) is not advanced: torch's Adam increments the
    count it is given, so it gets a copy, and the caller counts the step once. The
    optimizer was checked by ``_check_plain_adam`` when the sync was built."""
    g = opt.param_groups[0]
    beta1, beta2 = g["betas"]
    P = n_params
    with torch.no_grad():
        torch_adam([flat[a:z]], [grad], [flat[P + a:P + z]], [flat[2 * P + a:2 * P + z]], [],
                   [step_t.clone()], foreach=False, capturable=False, differentiable=False,
                   fused=None, amsgrad=False, beta1=beta1, beta2=beta2, lr=g["lr"],
                   weight_decay=g["weight_decay"], eps=g["eps"], maximize=False)
