"""A 1-D CNN over one-hot SMILES in the style of tCNNs (Liu et al. 2019, IMPROVE's tCNNs).

The drug branch reads the ``drug.smiles`` group (``hbl_mpi/data/smiles.py``: build the data
with ``--smiles-onehot LENGTH``) as a (alphabet, length) sequence and runs Conv1d + ReLU +
MaxPool layers over it; the cell branch runs the same kind of stack over the expression
vector as a one-channel sequence, as tCNNs does over its genomic feature vector. The two
flattened maps (and the dose) go through dense layers to one output. Other feature groups
(descriptors, fingerprints) are not read: tCNNs' inputs are the SMILES and the cell only.

``build(inputs, params)``: ``params.preset`` is ``tiny`` (tests), ``small`` (CPU) or ``paper``
(tCNNs' published stack as we read it: 40/80/60 filters of width 7, max-pool 3, two dense
layers of 1024, dropout 0.5; not checked against their code); other entries override.
"""

from __future__ import annotations

import torch
from torch import nn

from hbl_mpi.data.smiles import ALPHABET, GROUP
from hbl_mpi.models.common import group_position, mlp, settings

PRESETS = {
    "tiny": {"channels": [4, 8], "kernel": 3, "pool": 2, "fc": [16], "dropout": 0.0, "smiles": GROUP,
             "expression": None},
    "small": {"channels": [16, 32], "kernel": 5, "pool": 3, "fc": [128], "dropout": 0.0, "smiles": GROUP,
              "expression": None},
    "paper": {"channels": [40, 80, 60], "kernel": 7, "pool": 3, "fc": [1024, 1024], "dropout": 0.5, "smiles": GROUP,
              "expression": None},
}


def _conv_stack(in_channels: int, length: int, channels, kernel: int, pool: int, what: str) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    c = in_channels
    for out in channels:
        length = (length - kernel + 1) // pool
        if length < 1:
            raise ValueError(f"{what}: the sequence is too short for {len(channels)} conv layers of width {kernel} "
                             f"with max-pool {pool}")
        layers += [nn.Conv1d(c, int(out), kernel), nn.ReLU(), nn.MaxPool1d(pool)]
        c = int(out)
    return nn.Sequential(*layers), c * length


class SmilesCNN(nn.Module):
    def __init__(self, inputs, p: dict):
        super().__init__()
        widths = [w for _, w in inputs.groups]
        self.smiles_at = group_position(inputs, p["smiles"], "drug.smiles")
        self.cell_at = group_position(inputs, p["expression"], "cell.")
        a = len(ALPHABET)
        if widths[self.smiles_at] % a:
            raise ValueError(f"group {p['smiles']!r} has width {widths[self.smiles_at]}, not a multiple of the "
                             f"SMILES alphabet ({a})")
        self.alphabet = a
        k, pool = int(p["kernel"]), int(p["pool"])
        self.drug, dw = _conv_stack(a, widths[self.smiles_at] // a, p["channels"], k, pool, "SMILES")
        self.cell, cw = _conv_stack(1, widths[self.cell_at], p["channels"], k, pool, "expression")
        self.has_dose = bool(inputs.has_dose)
        self.top, w = mlp(dw + cw + int(self.has_dose), p["fc"], p["dropout"])
        self.out = nn.Linear(w, 1)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        s = xs[self.smiles_at]
        seq = s.view(len(s), -1, self.alphabet).transpose(1, 2)  # (B, alphabet, length)
        h = [self.drug(seq).flatten(1), self.cell(xs[self.cell_at].unsqueeze(1)).flatten(1)]
        if self.has_dose:
            h.append(xs[-1].reshape(-1, 1))
        return self.out(self.top(torch.cat(h, dim=1))).squeeze(1)


def build(inputs, params: dict) -> nn.Module:
    """The plug-in factory (``model = "hbl_mpi.models.smiles_cnn:build"``)."""
    return SmilesCNN(inputs, settings(params, PRESETS, "small"))
