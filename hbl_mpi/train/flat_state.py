"""A model's whole training state in one contiguous buffer: the unit that forks.

``TrainState.flat`` is a 1-D float32 tensor ``[params | exp_avg | exp_avg_sq]`` of length
3P (Adam, the default; ``optim.py``: AdamW has the same slots, SGD one momentum slot or
none). The module's parameters are views into the first P elements (and their gradients
views into one flat gradient buffer), and the optimizer's state tensors *are* the other
slots, so the optimizer updates the buffer in place. Consequences the rest of the system uses:

* a snapshot (the best epoch, a held parent) is one ``clone()`` — a memcpy;
* a fork to another rank is one ``Send`` of ``flat`` plus a tiny header;
* the data-parallel gradient allreduce is one call on one contiguous gradient tensor;
* a checksum of ``flat`` identifies a state exactly (bit-identical CPU runs).

Host buffers of states are backed by transparent huge pages where Linux allows it
(``flat_buffer``): an intra-node fork is one cross-process copy (``process_vm_readv``, the
single-copy path MPICH/UCX take for large messages), which pins the sender's pages one by
one; with 2 MB pages instead of 4 KB ones the 195 MB paper-preset state forked 27-41 %
faster on the benchmark host (bench/fork.py, BENCHMARKS.md). Values are unaffected.
"""

from __future__ import annotations

import ctypes
import hashlib
import sys
from dataclasses import dataclass

import torch
from torch import nn

from hbl_mpi.train.optim import OptimizerSpec, bind_state, make_optimizer


_MADV_HUGEPAGE = 14  # Linux <sys/mman.h>
_HUGE = 2 << 20


def _advise_hugepages(t: torch.Tensor) -> None:
    """Ask Linux for transparent huge pages on the 2 MB-aligned interior of ``t``'s memory.

    Only effective before the pages are first touched, and only when
    /sys/kernel/mm/transparent_hugepage/enabled is ``madvise`` (with ``always`` they are
    huge already, with ``never`` nothing happens). Failure is harmless and ignored.
    """
    if not sys.platform.startswith("linux") or t.device.type != "cpu":
        return
    start = t.data_ptr()
    end = start + t.numel() * t.element_size()
    lo, hi = (start + _HUGE - 1) & ~(_HUGE - 1), end & ~(_HUGE - 1)
    if hi > lo:
        try:
            ctypes.CDLL(None).madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), _MADV_HUGEPAGE)
        except (AttributeError, OSError):
            pass


def flat_buffer(n: int, device="cpu") -> torch.Tensor:
    """An uninitialised float32 state buffer of length ``n`` (huge-page backed on a Linux host)."""
    t = torch.empty(n, dtype=torch.float32, device=device)
    _advise_hugepages(t)
    return t


def clone_flat(t: torch.Tensor) -> torch.Tensor:
    """A private copy of a flat state buffer, in a ``flat_buffer`` (what held states are made of)."""
    out = flat_buffer(t.numel(), t.device)
    out.copy_(t.detach())
    return out


@dataclass
class ModelState:
    """An immutable snapshot: the flat buffer, the parameter count and the optimizer's step."""

    flat: torch.Tensor  # float32, 1-D, contiguous, length (1 + optimizer slots) * n_params
    n_params: int
    step: int

    def params(self) -> torch.Tensor:
        return self.flat[: self.n_params]

    def checksum(self) -> str:
        """SHA-256 (16 hex digits) of the state's bytes and step."""
        h = hashlib.sha256()
        h.update(self.flat.detach().to("cpu").contiguous().numpy().tobytes())
        h.update(int(self.step).to_bytes(8, "little"))
        return h.hexdigest()[:16]

    def to(self, device) -> "ModelState":
        return ModelState(self.flat.to(device), self.n_params, self.step)

    @property
    def nbytes(self) -> int:
        return self.flat.numel() * self.flat.element_size()


class TrainState:
    """A module, a flat parameter view of it, and the optimizer (Adam unless told) on that view.

    ``module`` only provides the architecture; its own parameters are not used after
    construction (their initial values are copied into the flat buffer). Its buffers stay
    in the module: they are constants of the architecture, never forked (``models/plugin.py``
    refuses a model whose buffers training would change).
    """

    def __init__(self, module: nn.Module, learning_rate: float, device="cpu",
                 optimizer: OptimizerSpec | None = None):
        self.optim_spec = optimizer if optimizer is not None else OptimizerSpec()
        self.module = module.to(device)
        self.names: list[str] = []
        self.shapes: list[torch.Size] = []
        self.offsets: list[int] = []
        off = 0
        for name, p in self.module.named_parameters():
            self.names.append(name)
            self.shapes.append(p.shape)
            self.offsets.append(off)
            off += p.numel()
        self.n_params = off
        self.flat = flat_buffer((1 + self.optim_spec.slots) * off, device).zero_()
        self.grad = torch.zeros(off, dtype=torch.float32, device=device)
        with torch.no_grad():
            for p, o in zip(self.module.parameters(), self.offsets):
                n = p.numel()
                self.flat[o : o + n].copy_(p.reshape(-1))
                # the module's parameters become views of the flat buffers, so a plain
                # forward/backward reads the flat weights and accumulates into the flat grad
                p.data = self.flat[o : o + n].view(p.shape)
                p.grad = self.grad[o : o + n].view(p.shape)
        self.param = nn.Parameter(self.flat[:off])
        self.param.grad = self.grad
        self.optimizer = make_optimizer(self.optim_spec, self.param, learning_rate)
        self._steps = 0  # the step count of an optimizer that keeps none (SGD)
        self._bind_optimizer_state(step=0)
        self.grad_sync = None  # a rank group's grad_sync.GradSync hooked on these parameters

    def _bind_optimizer_state(self, step: int) -> None:
        bind_state(self.optim_spec, self.optimizer, self.param, self.flat, self.n_params, step)
        self._steps = step

    @property
    def step(self) -> int:
        counted = self.optimizer.state[self.param].get("step")
        return int(counted.item()) if counted is not None else self._steps

    def optimizer_step(self) -> None:
        """One optimizer step on the flat gradient (the trainer's and a group's one entry)."""
        self.optimizer.step()
        self._steps += 1

    def forward(self, *args):
        return self.module(*args)

    def zero_grad(self) -> None:
        self.grad.zero_()

    def snapshot(self) -> ModelState:
        return ModelState(clone_flat(self.flat), self.n_params, self.step)

    def disk_snapshot(self) -> ModelState:
        """A private copy in ordinary (4 KB) pages, for a reader that never sends it over MPI
        (the checkpoint writer). A fresh huge-page buffer is slow to first touch on some
        hosts: on this VM a 160 MB ``clone_flat`` took 0.43-0.54 s in most epochs against
        0.03-0.07 s for a plain clone, and that per-epoch copy is on the training path."""
        return ModelState(self.flat.detach().clone(), self.n_params, self.step)

    def load(self, state: ModelState) -> None:
        """Copy a snapshot in (weights, optimizer state and step)."""
        if state.n_params != self.n_params:
            raise ValueError(
                f"state has {state.n_params} parameters, model has {self.n_params}: "
                "different model preset or feature widths"
            )
        if state.flat.numel() != self.flat.numel():
            raise ValueError(f"state has {state.flat.numel()} elements, this optimizer's needs "
                             f"{self.flat.numel()}: a state of another optimizer")
        with torch.no_grad():
            self.flat.copy_(state.flat.to(self.flat.device))
        self._bind_optimizer_state(state.step)
