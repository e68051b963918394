"""Impact: how much learning from a cell changes the *other* cells' error (docs/findings/impact.md §8).

Why the tree can measure it: siblings ``p.1 … p.N`` start from the same state (their
parent's) and share ``train(p)``; child ``p.k`` additionally trains on every validation
group of ``p`` except its own, ``G_k = val(p.k)``. Every node also scores the common
holdout rows per cell (``cell_test``), rows that no node ever trains on. So, per family:

* ``y[k, c]`` = child k's holdout MSE of cell c. Cell c is a *reference* for child k
  unless k held c out (``c ∈ G_k``): at the children that keep it, the cell's own data
  is always in training, so its own "self" effect is a constant of the cell and cancels.
* Two-way fit on the references, weighted by the cell's holdout rows:
  ``y[k, c] = b_c + d_k + ε`` (``b_c``: the cell's level, ``d_k``: child k's excess error
  on the others). Child k is the one that did *not* learn ``G_k``, so the group's effect
  on the other cells, relative to the family's mean group, is ``e_k = mean(d) - d_k``
  (> 0: the siblings that learned ``G_k`` are worse on the references: it harms).
* Additive model down the tree: ``A(v)`` = the summed effect of the cells of ``val(v)``.
  Then ``e_{p,k} = A(p.k) - A(p) / N``, so ``A(p.k) = e_{p,k} + A(p) / N`` from the root
  down; a cell's impact is its deepest group's ``A / |group|``. The tree's finest groups
  are its leaves' validation sets: cells of one leaf share one impact (the tree cannot
  tell them apart; ``combined`` breaks the tie with the resist score).
* ``A(root)`` is not identified (it is the effect of all the data at once). It enters a
  leaf as ``A(root) / N^S``, so it is fixed by a fit that makes the per-cell impacts as
  equal as possible across leaf sizes (most cells are ordinary), and impacts are then
  centred on the median cell: ``impact > 0`` = learning from the cell raises the other
  cells' holdout MSE more than learning from a typical cell does.

Uncertainty: contrasts of ordinary groups should be zero, so the robust spread (1.4826 ×
MAD) of a stage's contrasts is that stage's noise floor (the siblings' seed-to-seed
noise plus the spread of ordinary groups); a stage with fewer than ``MIN_NOISE_CONTRASTS``
contrasts borrows the largest floor of the stages that have enough. It propagates down
the recursion (independent families): ``Var A(p.k) = σ_s² + Var A(p) / N²``.

Pure pandas/numpy: the inputs are the results' ``cell_test``, ``plan`` and ``nodes``
tables (``analysis.RunTables``); no torch, no MPI.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from hbl_mpi.analysis.robust import MAD_SCALE, robust_z
from hbl_mpi.tree.plan import ROOT, node_sort_key, parent_of, stage_of

MIN_NOISE_CONTRASTS = 8
"""A stage's noise floor needs this many contrasts; fewer (stage 1 has N) borrow another stage's."""
FIT_ITERATIONS = 200
COLUMNS = ["cell", "impact", "impact_sd", "impact_z", "impact_node", "impact_group_cells"]


@dataclass
class ImpactResult:
    """Per-cell impacts and the per-family contrasts they come from (the evidence)."""

    cells: pd.DataFrame  # COLUMNS, one row per cell
    contrasts: pd.DataFrame  # parent, stage, child, effect, group_cells, reference_cells, noise
    noise: dict[int, float]  # stage -> noise floor of a contrast


# ---------------------------------------------------------------------------
# one family
# ---------------------------------------------------------------------------
def two_way_fit(y: np.ndarray, w: np.ndarray, iterations: int = FIT_ITERATIONS) -> np.ndarray:
    """``d`` (mean 0) of ``y[k, c] = b_c + d_k`` over the finite entries, weights ``w[c]``.

    Alternating weighted means (the normal equations of the two-way model); only cells
    seen by at least two children carry information and are kept.
    """
    mask = np.isfinite(y)
    keep = mask.sum(axis=0) >= 2
    y, mask, w = y[:, keep], mask[:, keep], w[keep]
    k = y.shape[0]
    d = np.zeros(k)
    if not keep.any():
        return d
    yz = np.where(mask, y, 0.0)
    wm = mask * w[None, :]
    row_w = np.maximum(wm.sum(axis=1), 1e-300)
    col_n = mask.sum(axis=0)
    for _ in range(iterations):
        b = (yz - d[:, None] * mask).sum(axis=0) / col_n
        new = ((yz - b[None, :]) * wm).sum(axis=1) / row_w
        new -= new.mean()
        if np.max(np.abs(new - d)) <= 1e-14 * (1.0 + np.max(np.abs(new))):
            d = new
            break
        d = new
    return d


def val_sets(plan: pd.DataFrame) -> dict[str, frozenset]:
    """node -> its validation cells, from the results' plan table (role ``val``)."""
    v = plan[plan["role"].astype(str) == "val"]
    return {str(n): frozenset(g.astype(str)) for n, g in v.groupby(v["node"].astype(str))["cell"]}


def family_contrasts(cell_test: pd.DataFrame, plan: pd.DataFrame,
                     nodes: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (family, child): the contrast ``e`` of the child's validation group.

    Columns: parent, stage (the children's), child, effect (MSE units: the change of the
    references' row-weighted holdout MSE attributed to learning the group, relative to
    the family's mean group), group_cells, reference_cells. Only done nodes (when
    ``nodes`` is given) with holdout errors count; a family needs two children.
    """
    vals = val_sets(plan)
    ct = cell_test[["node", "cell", "n_rows", "mse"]].copy()
    ct["node"] = ct["node"].astype(str)
    ct["cell"] = ct["cell"].astype(str)
    ct = ct[np.isfinite(ct["mse"].astype("float64")) & (ct["n_rows"] > 0)]
    if nodes is not None:
        done = set(nodes.loc[nodes["status"].astype(str) == "done", "node"].astype(str))
        ct = ct[ct["node"].isin(done)]
    present = set(ct["node"])
    by_parent: dict[str, list[str]] = {}
    for n in sorted(present & set(vals), key=node_sort_key):
        by_parent.setdefault(parent_of(n), []).append(n)
    cells = np.array(sorted(set(ct["cell"])), dtype=object)
    col = {c: i for i, c in enumerate(cells)}
    mse = ct.pivot_table(index="node", columns="cell", values="mse", aggfunc="mean").reindex(columns=cells)
    rows_per_cell = ct.groupby("cell")["n_rows"].max().reindex(cells).to_numpy(dtype=np.float64)
    out = []
    for parent, kids in by_parent.items():
        if len(kids) < 2:
            continue
        y = mse.loc[kids].to_numpy(dtype=np.float64).copy()
        for i, k in enumerate(kids):  # the child that held a cell out does not see it as a reference
            own = [col[c] for c in vals[k] if c in col]
            y[i, own] = np.nan
        d = two_way_fit(y, rows_per_cell)
        refs = np.isfinite(y).sum(axis=1)
        for i, k in enumerate(kids):
            out.append({"parent": parent, "stage": stage_of(k), "child": k, "effect": float(-d[i]),
                        "group_cells": len(vals[k]), "reference_cells": int(refs[i])})
    cols = ["parent", "stage", "child", "effect", "group_cells", "reference_cells"]
    return pd.DataFrame(out, columns=cols)


# ---------------------------------------------------------------------------
# the noise floor and the attribution down the tree
# ---------------------------------------------------------------------------
def noise_floor(contrasts: pd.DataFrame, min_contrasts: int = MIN_NOISE_CONTRASTS) -> dict[int, float]:
    """Stage -> robust spread of its contrasts (what an ordinary group's contrast scatters by)."""
    floors: dict[int, float] = {}
    for stage, g in contrasts.groupby("stage"):
        e = g["effect"].to_numpy(dtype=np.float64)
        if len(e) >= min_contrasts:
            floors[int(stage)] = float(MAD_SCALE * np.median(np.abs(e - np.median(e))))
    fallback = max(floors.values()) if floors else (
        float(contrasts["effect"].abs().max()) if len(contrasts) else 0.0)
    return {int(s): floors.get(int(s), fallback) for s in contrasts["stage"].unique()}


def _fix_root_constant(a: np.ndarray, b: np.ndarray, iterations: int = 100) -> float:
    """C minimising the absolute spread of ``a + C b`` (least absolute deviations, by IRLS).

    Absolute, not squared: the few harmful or helpful cells must not pull the constant
    that the many ordinary cells determine.
    """
    if len(a) < 3 or np.ptp(b) <= 1e-12 * max(np.abs(b).max(), 1e-300):
        return 0.0
    x = np.column_stack([b, np.ones(len(b))])
    scale = max(np.abs(a).max(), 1e-300)
    w = np.ones(len(a))
    c = 0.0
    for _ in range(iterations):
        sw = np.sqrt(w)
        coef, *_ = np.linalg.lstsq(x * sw[:, None], -a * sw, rcond=None)
        done = abs(coef[0] - c) <= 1e-12 * (1.0 + abs(coef[0]))
        c = float(coef[0])
        if done:
            break
        w = 1.0 / np.maximum(np.abs(a + x @ coef), 1e-9 * scale)
    return c


def attribute(contrasts: pd.DataFrame, plan: pd.DataFrame, noise: dict[int, float]) -> pd.DataFrame:
    """Per cell: impact (per-cell share of its deepest group's effect), its sd and z."""
    vals = val_sets(plan)
    all_cells = frozenset().union(*vals.values()) if vals else frozenset()
    size = {n: len(v) for n, v in vals.items()}
    size[ROOT] = len(all_cells)
    vals[ROOT] = all_cells
    total, coef, var = {ROOT: 0.0}, {ROOT: 1.0}, {ROOT: 0.0}
    fams = contrasts.groupby("parent", sort=False)
    for parent in sorted(contrasts["parent"].unique(), key=node_sort_key):
        if parent not in total:
            continue  # its own family was not measured: its children inherit from above
        g = fams.get_group(parent)
        covered = sum(size[c] for c in g["child"])
        share = (covered / max(size[parent], 1)) / len(g)  # of A(parent) each child's group holds
        for child, e, stage in zip(g["child"], g["effect"], g["stage"]):
            total[child] = float(e) + share * total[parent]
            coef[child] = share * coef[parent]
            var[child] = noise.get(int(stage), 0.0) ** 2 + share ** 2 * var[parent]
    # every cell's deepest measured group
    deepest: dict[str, str] = {}
    for node in sorted(total, key=lambda n: (stage_of(n) if n != ROOT else 0, node_sort_key(n))):
        for c in vals.get(node, ()):
            deepest[c] = node
    cells = np.array(sorted(deepest), dtype=object)
    groups = [deepest[c] for c in cells]
    n = np.array([max(size[g], 1) for g in groups], dtype=np.float64)
    a = np.array([total[g] for g in groups]) / n
    b = np.array([coef[g] for g in groups]) / n
    impact = a + _fix_root_constant(a, b) * b
    impact = impact - np.median(impact) if len(impact) else impact
    sd = np.sqrt(np.array([var[g] for g in groups])) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sd > 0, impact / sd, 0.0)
    return pd.DataFrame({"cell": cells.astype(str), "impact": impact, "impact_sd": sd, "impact_z": z,
                         "impact_node": groups, "impact_group_cells": n.astype(np.int64)}, columns=COLUMNS)


def cell_impact(cell_test: pd.DataFrame, plan: pd.DataFrame, nodes: pd.DataFrame | None = None,
                min_noise_contrasts: int = MIN_NOISE_CONTRASTS) -> ImpactResult:
    """The whole estimator: family contrasts -> noise floor -> per-cell impacts."""
    con = family_contrasts(cell_test, plan, nodes)
    noise = noise_floor(con, min_noise_contrasts)
    con = con.assign(noise=con["stage"].map(noise))
    return ImpactResult(attribute(con, plan, noise), con, noise)


# ---------------------------------------------------------------------------
# the two axes together
# ---------------------------------------------------------------------------
def run_impact(run) -> ImpactResult | None:
    """A results file's (``results.RunTables``) impact estimate, or None when it predates
    ``cell_test`` (or lacks a plan)."""
    if run.cell_test is None or run.plan is None or not len(run.cell_test):
        return None
    return cell_impact(run.cell_test, run.plan, run.nodes)


def _filled_z(x: pd.Series) -> pd.Series:
    """``robust_z`` for a sum of scores: a constant series gives zeros, a missing value the
    smallest finite value of ``x`` (a cell with no estimate adds nothing notable)."""
    finite = x.replace([np.inf, -np.inf], np.nan)
    z = robust_z(x, constant="zero")
    if not (z.abs() > 0).any():
        return z.fillna(0.0)
    return z.fillna(finite.min() if finite.notna().any() else 0.0)


def combined_score(resist: pd.Series, impact: pd.Series) -> pd.Series:
    """robust_z(resist) + robust_z(impact) per cell: harmful to the others and/or unlearnable.

    Both axes on one scale (robust z over the cells), summed: a leaf's cells share one
    impact, and the resist score orders them inside the leaf. Which of resist, impact and
    this sum ``curate`` uses by default was measured (docs/findings/impact.md §8).
    """
    idx = resist.index.union(impact.index)
    r = _filled_z(resist.reindex(idx))
    i = _filled_z(impact.reindex(idx))
    return r.fillna(0.0) + i.fillna(0.0)


def add_impact(ranking: pd.DataFrame, result: ImpactResult) -> pd.DataFrame:
    """``cell_ranking`` plus the impact columns and the ``combined`` score (score stays resist)."""
    out = ranking.merge(result.cells, on="cell", how="left")
    out["combined"] = combined_score(out.set_index("cell")["score"], out.set_index("cell")["impact"]).to_numpy()
    return out
