"""An example user model for hbl_mpi, outside the package (docs/models.md).

Run it with ``model = "examples/my_model.py:build"`` (relative to the config file) and
optional ``[model_params]`` (``hidden``, ``rank``, ``dropout``). It is deliberately not
Uno: each feature group is encoded by LayerNorm + Linear, and the prediction is an MLP
over the encodings plus a low-rank bilinear term between the first group (the cell)
and the others (the drug), a form common in drug-response models.

What the contract asks of it (and ``hbl_mpi.models.plugin.check_model`` verifies before
a run starts): ``build(inputs, params)`` returns an ``nn.Module`` whose parameters are
float32, whose buffers are constants (here: none besides what LayerNorm holds, which is
parameters only) and whose ``forward(*groups[, dose])`` returns shape (B,).
"""

from __future__ import annotations

import torch
from torch import nn


class BilinearResponse(nn.Module):
    def __init__(self, widths: list[int], has_dose: bool, hidden: int, rank: int, dropout: float):
        super().__init__()
        self.encoders = nn.ModuleList(nn.Sequential(nn.LayerNorm(w), nn.Linear(w, hidden), nn.ReLU()) for w in widths)
        self.has_dose = has_dose
        self.cell_proj = nn.Linear(hidden, rank, bias=False)
        self.drug_proj = nn.Linear(hidden * max(1, len(widths) - 1), rank, bias=False)
        top_in = hidden * len(widths) + int(has_dose)
        self.top = nn.Sequential(nn.Linear(top_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        n = len(self.encoders)
        h = [enc(x) for enc, x in zip(self.encoders, xs[:n])]
        drug = torch.cat(h[1:], dim=1) if n > 1 else h[0]
        bilinear = (self.cell_proj(h[0]) * self.drug_proj(drug)).sum(dim=1)
        top = h + ([xs[n].reshape(-1, 1)] if self.has_dose else [])
        return self.top(torch.cat(top, dim=1)).squeeze(1) + bilinear


def build(inputs, params: dict) -> nn.Module:
    """The factory hbl_mpi calls: ``inputs.groups`` (name, width) pairs, ``inputs.has_dose``."""
    unknown = set(params) - {"hidden", "rank", "dropout"}
    if unknown:
        raise ValueError(f"unknown model_params {sorted(unknown)}")
    return BilinearResponse([w for _, w in inputs.groups], inputs.has_dose, int(params.get("hidden", 16)),
                            int(params.get("rank", 4)), float(params.get("dropout", 0.0)))
