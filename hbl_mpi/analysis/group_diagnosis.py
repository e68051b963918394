"""``distinct_group``: a flagged cell whose error its metadata group shares (biology or assay of the group).

On real data most top suspects are not bad measurements but lines of a kind the model has
not learned (GDSC2: leukaemias and lymphomas, docs/gdsc-study.md); their remedy is to model
the group, not to drop the cell. The evidence is the group's own residuals:

* For every metadata column and every value held by at least ``MIN_MEMBERS + 1`` cells of
  the held-out grid, each member's drug-centred residual profile r_c
  (``diagnosis.drug_centred_residuals``) is compared with the mean profile m_g of the
  *other* members (leave one out, drug by drug where at least 2 others are measured).
* ``group_coherence`` = cos(r_c, m_g), over the drugs both have: near 0 when the cell's
  error is its own (noise, a swap, a private offset), high when the group errs the same way.
  ``group_share`` = 1 - |r_c - m_g|^2 / |r_c|^2: the part of the cell's squared residual
  the group mean explains without any fitted scale.
* Per cell, the column whose group explains most of it is kept (``group_column``,
  ``group_value``, ``group_size``).

Why the rule is on ``group_share`` and not on the cosine: drug-centring by the median over
all cells leaves a small component that every member of a large group shares (minus the
minority's effect), and a scale-free cosine sees it (about 0.16 for a 50-cell majority in
tests/test_group_diagnosis.py); the share counts it at its size. share <= cos^2 always
(the unfitted scale can only lose), so share >= 0.42 implies cos >= 0.65.

``apply_group_rule`` relabels a flagged cell whose diagnosis is not a cell-level error of
its own evidence (``label_noise``, ``swap``, ``replicate_disagreement``) as ``distinct_group``
when ``group_share`` >= the rule's threshold, with a bootstrap confidence over its drugs.
The threshold and its derivation on GDSC2: docs/findings/real-data.md.

Pure numpy/pandas: tables in, tables out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hbl_mpi.analysis.diagnosis import Grid, drug_centred_residuals

MIN_MEMBERS = 3
"""Other members a group needs in the grid for its mean to stand for the group."""
GROUP_SHARE = 0.42
"""Threshold on ``group_share``: the 99th percentile of the unflagged cells' group_share on GDSC2
(N = 4, S = 2 tree, gdsctools' cosmic_info columns), above the 99.9th percentile (0.37) of the
same statistic with the metadata permuted across cells (docs/findings/real-data.md)."""
KEEP = ("label_noise", "swap", "replicate_disagreement")
"""Diagnoses the group rule never overrides: the cell's own evidence says its data is wrong."""
EVIDENCE = ["group_column", "group_value", "group_size", "group_coherence", "group_share"]
EPS = 1e-12


def _share(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted 1 - |a - b|^2 / |a|^2 along the last axis: the part of a that b explains as it is."""
    return 1.0 - (w * (a - b) ** 2).sum(-1) / np.maximum((w * a * a).sum(-1), EPS)


def _cos(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted cosine of rows of ``a`` and ``b`` (w broadcasts), NaN where either is zero."""
    num = (w * a * b).sum(-1)
    den = np.sqrt((w * a * a).sum(-1) * (w * b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > EPS, num / np.maximum(den, EPS), np.nan)


def _loo_means(rc: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out mean residual profiles of a group's members: (means, usable mask)."""
    sub = rc[members]
    ok = np.isfinite(sub)
    tot = np.where(ok, sub, 0.0).sum(0)
    cnt = ok.sum(0)
    others = cnt[None, :] - ok
    mean = (tot[None, :] - np.where(ok, sub, 0.0)) / np.maximum(others, 1)
    use = ok & (others >= 2)
    return mean, use


def group_evidence(grid: Grid, metadata: pd.DataFrame | None) -> pd.DataFrame:
    """One row per grid cell: the most coherent metadata group's evidence (:data:`EVIDENCE`;
    NaN / "" where no group of the cell has enough members)."""
    cells = [str(c) for c in grid.cells]
    out = pd.DataFrame({"cell": cells, "group_column": "", "group_value": "", "group_size": 0,
                        "group_coherence": np.nan, "group_share": np.nan})
    if metadata is None or not len(metadata) or not len(cells):
        return out
    rc = drug_centred_residuals(grid)
    rc = np.where(grid.measured, rc, np.nan)
    meta = metadata.assign(cell=metadata["cell"].astype(str)).drop_duplicates("cell").set_index("cell")
    meta = meta.reindex(cells).fillna("").astype(str)
    best = np.full(len(cells), -np.inf)
    for col in meta.columns:
        values = meta[col].to_numpy()
        for value, size in pd.Series(values[values != ""]).value_counts().items():
            if size < MIN_MEMBERS + 1:
                continue
            members = np.flatnonzero(values == value)
            mean, use = _loo_means(rc, members)
            r = np.where(use, rc[members], 0.0)
            m = np.where(use, mean, 0.0)
            w = use.astype(np.float64)
            cos = _cos(r, m, w)
            share = np.where(use.any(1), _share(r, m, w), np.nan)
            better = np.nan_to_num(share, nan=-np.inf) > best[members]
            idx = members[better]
            best[idx] = share[better]
            out.loc[idx, "group_column"] = str(col)
            out.loc[idx, "group_value"] = str(value)
            out.loc[idx, "group_size"] = int(size)
            out.loc[idx, "group_coherence"] = cos[better]
            out.loc[idx, "group_share"] = share[better]
    return out


def _bootstrap_share(grid: Grid, rc: np.ndarray, i: int, members: np.ndarray, n: int, rng) -> np.ndarray:
    """group_share of grid row ``i`` under ``n`` resamples of its drugs (with replacement)."""
    mean, use = _loo_means(rc, members)
    j = int(np.flatnonzero(members == i)[0])
    u = np.flatnonzero(use[j])
    if not len(u):
        return np.full(n, np.nan)
    pick = u[rng.integers(len(u), size=(n, len(u)))]
    w = np.zeros((n, rc.shape[1]))
    for b in range(n):
        w[b] = np.bincount(pick[b], minlength=rc.shape[1])
    return _share(np.where(use[j], rc[i], 0.0)[None, :], np.where(use[j], mean[j], 0.0)[None, :], w)


def apply_group_rule(table: pd.DataFrame, grid: Grid, metadata: pd.DataFrame | None,
                     threshold: float = GROUP_SHARE, bootstrap: int = 200, seed: int = 0) -> pd.DataFrame:
    """``table`` (``diagnosis.diagnose`` output) with the :data:`EVIDENCE` columns and flagged
    cells relabelled ``distinct_group`` where their group errs as they do (see the module doc).
    Confidence of a relabelled cell: the fraction of drug resamples keeping ``group_share`` >= threshold."""
    ev = group_evidence(grid, metadata)
    out = table.drop(columns=[c for c in EVIDENCE if c in table.columns]).merge(ev, on="cell", how="left")
    if metadata is None:
        return out
    hit = (out["flagged"].astype(bool) & ~out["diagnosis"].isin(KEEP)
           & (out["group_share"].fillna(-np.inf) >= threshold))
    if not hit.any():
        return out
    rc = np.where(grid.measured, drug_centred_residuals(grid), np.nan)
    idx = grid.index()
    meta = metadata.assign(cell=metadata["cell"].astype(str)).drop_duplicates("cell").set_index("cell")
    meta = meta.reindex([str(c) for c in grid.cells]).fillna("").astype(str)
    rng = np.random.default_rng(seed)
    for r in np.flatnonzero(hit.to_numpy()):
        row = out.iloc[r]
        i = idx[str(row["cell"])]
        members = np.flatnonzero(meta[row["group_column"]].to_numpy() == row["group_value"])
        conf = 1.0
        if bootstrap > 0:
            boot = _bootstrap_share(grid, rc, i, members, bootstrap, rng)
            conf = float(np.mean(np.nan_to_num(boot, nan=-np.inf) >= threshold))
        out.iloc[r, out.columns.get_loc("diagnosis")] = "distinct_group"
        out.iloc[r, out.columns.get_loc("confidence")] = conf
        out.iloc[r, out.columns.get_loc("likely_identity")] = ""
    return out


def group_profile(metadata: pd.DataFrame | None, ranking: pd.DataFrame, cell: str) -> pd.DataFrame:
    """How the cell's groups behave: per metadata column, its value, the group's size, its
    members' median rank and how many of them are in the top 50 (for the cell's page)."""
    if metadata is None:
        return pd.DataFrame()
    meta = metadata.assign(cell=metadata["cell"].astype(str)).drop_duplicates("cell").set_index("cell")
    if cell not in meta.index:
        return pd.DataFrame()
    rank = ranking.assign(cell=ranking["cell"].astype(str)).set_index("cell")["rank"]
    diag = ranking.assign(cell=ranking["cell"].astype(str)).set_index("cell").get("diagnosis")
    rows = []
    n = len(rank)
    for col in meta.columns:
        v = str(meta.loc[cell, col])
        if not v:
            continue
        members = meta.index[meta[col].astype(str) == v]
        rk = rank.reindex(members).dropna()
        if len(members) < 2:
            continue
        r = {"column": col, "value": v, "cells": len(members), "median_rank": float(rk.median()),
             "of_all_cells": n, "in_top_50": int((rk <= 50).sum())}
        if diag is not None:
            r["distinct_group"] = int((diag.reindex(members) == "distinct_group").sum())
        rows.append(r)
    return pd.DataFrame(rows)
