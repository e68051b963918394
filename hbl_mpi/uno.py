"""The Uno drug-response model (docs/design.md §4), as CANDLE's Uno builds it.

One encoder per feature group (cell expression; drug descriptors; drug fingerprints when
present), each a stack of Dense + ReLU (+ dropout) layers; the encodings are concatenated
(with the dose when the data has one) and go through a top stack of Dense layers to one
linear output. The loss is MSE.

Why a module with a plain ``forward(*inputs)``: ``TrainState`` runs it through
``torch.func.functional_call`` with parameter views into one flat buffer (the unit that
forks between ranks), so the module itself must hold nothing but architecture.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hbl_mpi.data.dataset import Dataset
from hbl_mpi.core.errors import InputError
from hbl_mpi.train.flat_state import ModelState, TrainState


@dataclass(frozen=True)
class UnoPreset:
    """Layer widths of the encoders and the top stack, and the default dropout."""

    encoder: tuple[int, ...]
    top: tuple[int, ...]
    dropout: float
    note: str = ""


PRESETS: dict[str, UnoPreset] = {
    # CANDLE's uno_auc_model.txt (the Top21 AUC model the paper trains): dense_feature_layers
    # = [1000] * 3, dense = [1000] * 5, ReLU, drop 0.1 -> 16.2 M parameters at Top21 widths
    "paper": UnoPreset((1000, 1000, 1000), (1000,) * 5, 0.1, "CANDLE uno_auc_model.txt: 16.2 M parameters at Top21 widths"),
    # a CPU preset: a whole N=4, S=3 tree on the small synthetic preset trains in minutes on
    # a laptop. No dropout: on a CPU, drawing the masks (bernoulli_) cost ~40 % of a step at
    # these widths (torch profiler), and early stopping on val_loss already regularises.
    "small": UnoPreset((128, 64), (128, 64), 0.0, "CPU preset for the demo and the synthetic studies"),
    # for tests: a few thousand parameters
    "tiny": UnoPreset((16,), (16,), 0.0, "unit tests"),
}


@dataclass(frozen=True)
class InputSpec:
    """What the model reads: one (name, width) per feature group, and whether a dose column exists."""

    groups: tuple[tuple[str, int], ...]
    has_dose: bool = False

    @classmethod
    def of(cls, dataset: Dataset) -> "InputSpec":
        return cls(tuple((g.name, g.width) for g in dataset.groups), dataset.dose is not None)


def preset_of(name: str) -> UnoPreset:
    if name not in PRESETS:
        raise InputError(f"model preset {name!r}: choose from {', '.join(PRESETS)}")
    return PRESETS[name]


def _dense_stack(width_in: int, widths: tuple[int, ...], dropout: float) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    w = width_in
    for out in widths:
        layers += [nn.Linear(w, out), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        w = out
    return nn.Sequential(*layers), w


class Uno(nn.Module):
    """``forward(x_group_0, ..., x_group_k[, dose]) -> prediction (B,)``."""

    def __init__(self, inputs: InputSpec, preset: UnoPreset, dropout: float | None = None):
        super().__init__()
        rate = preset.dropout if dropout is None else float(dropout)
        self.inputs = inputs
        self.group_names = [name for name, _ in inputs.groups]
        encoders = []
        width_top = 0
        for _, width in inputs.groups:
            enc, w = _dense_stack(width, preset.encoder, rate)
            encoders.append(enc)
            width_top += w
        self.encoders = nn.ModuleList(encoders)
        self.has_dose = inputs.has_dose
        self.top, w = _dense_stack(width_top + int(self.has_dose), preset.top, rate)
        self.out = nn.Linear(w, 1)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        n = len(self.encoders)
        h = [enc(x) for enc, x in zip(self.encoders, xs[:n])]
        if self.has_dose:
            h.append(xs[n].reshape(-1, 1))
        return self.out(self.top(torch.cat(h, dim=1))).squeeze(1)


def _inputs(data) -> InputSpec:
    if isinstance(data, InputSpec):
        return data
    if isinstance(data, Dataset):
        return InputSpec.of(data)
    # plain feature widths (benchmarks): one group per width, no dose
    return InputSpec(tuple((f"input{i}", int(w)) for i, w in enumerate(data)))


def build_model(data: Dataset | InputSpec | list[int], preset: str = "small", dropout: float | None = None) -> Uno:
    """The Uno model for a data set (or an ``InputSpec``, or a list of feature widths)."""
    return Uno(_inputs(data), preset_of(preset), dropout)


def initial_state(data: Dataset | InputSpec | list[int], preset: str, seed: int, learning_rate: float,
                  dropout: float | None = None) -> ModelState:
    """The fresh initialisation every stage-1 node starts from, a pure function of ``seed``.

    Built on the CPU under a private RNG so every rank gets the same bytes whatever it
    did before (and the caller's RNG state is untouched).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(data, preset, dropout)
    return TrainState(model, learning_rate, "cpu").snapshot()


def layer_table(model: Uno) -> list[dict]:
    """One row per layer with parameters: block, layer, input -> output width, parameters."""
    rows = []
    blocks = [(f"encoder {name}", enc) for name, enc in zip(model.group_names, model.encoders)]
    blocks += [("top", model.top), ("output", nn.Sequential(model.out))]
    for block, seq in blocks:
        dense = [layer for layer in seq if isinstance(layer, nn.Linear)]
        for i, layer in enumerate(dense):
            rows.append({"block": block, "layer": "linear" if block == "output" else f"dense {i + 1}",
                         "in": layer.in_features, "out": layer.out_features,
                         "params": sum(p.numel() for p in layer.parameters())})
    return rows


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
