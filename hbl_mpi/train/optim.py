"""The optimizers a run may name, and where each keeps its state in the flat buffer.

``TrainState.flat`` is ``[params | slot 1 | slot 2 ...]``: the parameters, then each of the
optimizer's per-parameter state tensors, all of length P. Binding torch's own optimizer
state to views of that buffer is what lets a fork (one ``Send`` of ``flat``), a snapshot
(one ``clone``) and a checkpoint carry the optimizer exactly: a child continues its
parent's moments (Adam, AdamW) or momentum (SGD), not a fresh optimizer.

* ``adam``: torch.optim.Adam, slots ``exp_avg``, ``exp_avg_sq`` (3P, the default; what every
  run before this option trained, bit for bit). ``weight_decay`` is Adam's L2 term.
* ``adamw``: torch.optim.AdamW (decoupled weight decay), the same two slots (3P).
* ``sgd``: torch.optim.SGD; with ``momentum > 0`` one slot ``momentum_buffer`` (2P), else
  none (P). The buffer starts at zeros, which torch's first step turns into the gradient
  itself (``0 * momentum + grad``), as torch's own lazily created buffer would be.

The step count travels in ``ModelState.step`` (Adam's bias correction needs it; SGD's is
kept for the same bookkeeping).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass(frozen=True)
class OptimizerSpec:
    """Which optimizer and its hyper-parameters (the learning rate is set per node)."""

    name: str = "adam"
    momentum: float = 0.0  # sgd only
    weight_decay: float = 0.0

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.name!r}: choose from {', '.join(OPTIMIZERS)}")

    @property
    def slot_names(self) -> tuple[str, ...]:
        """The per-parameter state tensors, in their order in the flat buffer after the weights."""
        if self.name in ("adam", "adamw"):
            return ("exp_avg", "exp_avg_sq")
        return ("momentum_buffer",) if self.momentum > 0 else ()

    @property
    def slots(self) -> int:
        return len(self.slot_names)

    @classmethod
    def of(cls, cfg) -> "OptimizerSpec":
        """From a RunConfig (or anything with ``optimizer``, ``momentum``, ``weight_decay``)."""
        return cls(getattr(cfg, "optimizer", "adam"), float(getattr(cfg, "momentum", 0.0)),
                   float(getattr(cfg, "weight_decay", 0.0)))


def make_optimizer(spec: OptimizerSpec, param: torch.nn.Parameter, learning_rate: float) -> torch.optim.Optimizer:
    """torch's optimizer on the one flat parameter, single-tensor path (``foreach=False``:
    the path whose arithmetic the sharded group step reproduces slice by slice)."""
    if spec.name == "adam":
        if spec.weight_decay == 0.0:  # exactly the optimizer runs before this option built
            return torch.optim.Adam([param], lr=learning_rate, foreach=False)
        return torch.optim.Adam([param], lr=learning_rate, weight_decay=spec.weight_decay, foreach=False)
    if spec.name == "adamw":
        return torch.optim.AdamW([param], lr=learning_rate, weight_decay=spec.weight_decay, foreach=False)
    return torch.optim.SGD([param], lr=learning_rate, momentum=spec.momentum,
                           weight_decay=spec.weight_decay, foreach=False)


def bind_state(spec: OptimizerSpec, optimizer: torch.optim.Optimizer, param: torch.nn.Parameter,
               flat: torch.Tensor, n_params: int, step: int) -> None:
    """Point the optimizer's state for ``param`` at the slots of ``flat`` (no copy)."""
    P = n_params
    state: dict = {name: flat[(i + 1) * P:(i + 2) * P] for i, name in enumerate(spec.slot_names)}
    if spec.name in ("adam", "adamw"):
        state["step"] = torch.tensor(float(step))
    optimizer.state[param] = state
