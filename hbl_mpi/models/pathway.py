"""A pathway-attention model in the style of HiDRA (Jin & Nam 2021, IMPROVE's HiDRA).

The expression group is split into gene sets; within each set a drug-conditioned gene-level
attention weighs the genes and a per-set layer embeds them; a drug-conditioned set-level
attention then weighs the sets, and the attended set embedding, with the drug embedding
(and the dose), goes through a dense stack to one output. So the network says which sets
it looked at, as HiDRA's pathway attention does.

Gene sets: ``model_params.pathway_file``, a JSON object ``{"set name": [column index, ...]}``
(0-based columns of the expression group, which must be in range). Without one the sets
are ``sets`` contiguous chunks of the expression columns, in the data's column order:
an arbitrary grouping, not biology (docs/models.md says so).

``build(inputs, params)``: ``params.preset`` is ``tiny`` (tests), ``small`` (CPU) or
``paper`` (HiDRA's scale: 186 KEGG-sized sets, 128-wide embeddings); every other entry
overrides the preset's value. The drug side is every group but the expression one.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn

from hbl_mpi.models.common import group_position, mlp, settings

PRESETS = {
    "tiny": {"sets": 4, "set_dim": 8, "drug_dim": 16, "att_dim": 8, "hidden": [16], "dropout": 0.0,
             "expression": None, "pathway_file": None},
    "small": {"sets": 16, "set_dim": 16, "drug_dim": 64, "att_dim": 16, "hidden": [64], "dropout": 0.0,
              "expression": None, "pathway_file": None},
    "paper": {"sets": 186, "set_dim": 128, "drug_dim": 128, "att_dim": 128, "hidden": [128, 128], "dropout": 0.1,
              "expression": None, "pathway_file": None},
}


def gene_sets(width: int, sets: int, pathway_file: str | None) -> list[list[int]]:
    """Column indices of each set: from the pathway file, else ``sets`` contiguous chunks."""
    if pathway_file:
        with open(pathway_file, encoding="utf-8") as f:
            raw = json.load(f)
        if not isinstance(raw, dict) or not raw:
            raise ValueError(f"pathway file {pathway_file!r}: expected a JSON object of set name -> column indices")
        out = []
        for name, cols in raw.items():
            if not isinstance(cols, list) or not cols or not all(isinstance(c, int) and 0 <= c < width for c in cols):
                raise ValueError(f"pathway file {pathway_file!r}: set {name!r} needs column indices in [0, {width})")
            out.append(cols)
        return out
    if not 1 <= int(sets) <= width:
        raise ValueError(f"sets = {sets}: must be in [1, expression width {width}]")
    return [list(map(int, c)) for c in np.array_split(np.arange(width), int(sets))]


class PathwayAttention(nn.Module):
    def __init__(self, inputs, p: dict):
        super().__init__()
        self.expr_at = group_position(inputs, p["expression"], "cell.")
        widths = [w for _, w in inputs.groups]
        sets = gene_sets(widths[self.expr_at], p["sets"], p["pathway_file"])
        K, L = len(sets), max(map(len, sets))
        idx = torch.zeros(K, L, dtype=torch.long)
        mask = torch.zeros(K, L, dtype=torch.bool)
        for k, cols in enumerate(sets):
            idx[k, : len(cols)] = torch.tensor(cols)
            mask[k, : len(cols)] = True
        self.register_buffer("idx", idx)  # constants of (inputs, params): allowed buffers
        self.register_buffer("mask", mask)
        self.has_dose = bool(inputs.has_dose)
        drug_in = sum(w for i, w in enumerate(widths) if i != self.expr_at)
        dd, sd, ad = int(p["drug_dim"]), int(p["set_dim"]), int(p["att_dim"])
        self.drug = nn.Sequential(nn.Linear(max(drug_in, 1), dd), nn.ReLU())
        self.gene_scale = nn.Parameter(torch.ones(K, L))
        self.gene_drug = nn.Linear(dd, K * L)
        self.set_weight = nn.Parameter(torch.randn(K, L, sd) / np.sqrt(L))
        self.set_bias = nn.Parameter(torch.zeros(K, sd))
        self.att_set = nn.Linear(sd, ad, bias=False)
        self.att_drug = nn.Linear(dd, ad)
        self.att_out = nn.Linear(ad, 1, bias=False)
        self.top, w = mlp(sd + dd + int(self.has_dose), p["hidden"], p["dropout"])
        self.out = nn.Linear(w, 1)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        n = len(xs) - int(self.has_dose)
        expr = xs[self.expr_at]
        others = [x for i, x in enumerate(xs[:n]) if i != self.expr_at]
        drug_x = torch.cat(others, dim=1) if others else expr.new_zeros(len(expr), 1)
        d = self.drug(drug_x)  # (B, dd)
        B, (K, L) = len(expr), self.idx.shape
        x = expr[:, self.idx]  # (B, K, L)
        logits = x * self.gene_scale + self.gene_drug(d).view(B, K, L)
        gene_att = torch.softmax(logits.masked_fill(~self.mask, float("-inf")), dim=2)
        e = torch.tanh(torch.einsum("bkl,kld->bkd", gene_att * x, self.set_weight) + self.set_bias)  # (B, K, sd)
        set_logits = self.att_out(torch.tanh(self.att_set(e) + self.att_drug(d).unsqueeze(1))).squeeze(2)
        context = (torch.softmax(set_logits, dim=1).unsqueeze(2) * e).sum(dim=1)  # (B, sd)
        h = [context, d] + ([xs[n].reshape(-1, 1)] if self.has_dose else [])
        return self.out(self.top(torch.cat(h, dim=1))).squeeze(1)


def build(inputs, params: dict) -> nn.Module:
    """The plug-in factory (``model = "hbl_mpi.models.pathway:build"``)."""
    return PathwayAttention(inputs, settings(params, PRESETS, "small"))
