"""Group impact: how much learning from a metadata group changes the *other* groups' holdout
error (config ``groups``; the derivation is docs/findings/group-impact.md §2).

With ``groups = "COLUMN"`` the root's children ``1.1 … 1.G`` each hold out one group
``G_k`` (tree/groups.py). They start from the same state (the root's initial weights),
train on everything but their group and score the common holdout rows per cell
(``cell_test``). So, as for single cells (impact.py), per stage-1 child k and cell c not
in ``G_k``: ``y[k, c] = b_c + d_k + ε``, fitted with the cells' holdout rows as weights
(``impact.two_way_fit``). Child k is the one that did not learn ``G_k``: ``e_k = -d_k``
is the group's effect on the other groups' cells relative to the mean group, and

    impact_k = e_k - median_j(e_j)

is relative to the median group (most groups are ordinary; the mean would hand a
harmful group's effect to every other group as an apparent benefit).

Uncertainty, two parts added in quadrature:

* reference sampling: a delete-one-block jackknife over the reference cells (cells in
  ``JACKKNIFE_BLOCKS`` blocks, the whole fit and the median centring redone per block):
  how much the answer depends on which cells the effect was measured on;
* training noise: the run's stage-2 noise floor (``impact.noise_floor``: the robust
  spread of the sibling contrasts one stage deeper, whose groups are ordinary parts of
  one metadata group, so the spread is mostly the training's seed-to-seed noise). With
  ``s = 1`` there is no deeper stage: the sd is the jackknife alone, and says so
  (``training_noise`` NaN).

``z = impact / impact_sd``; a group beyond ``FLAG_Z`` harms (> 0) or helps (< 0) the others
beyond noise. Pure pandas/numpy, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from hbl_mpi.analysis.impact import family_contrasts, noise_floor, two_way_fit, val_sets
from hbl_mpi.tree.groups import group_parts
from hbl_mpi.tree.plan import ROOT, node_sort_key, parent_of

COLUMNS = ["column", "value", "n_cells", "impact", "impact_sd", "z"]
JACKKNIFE_BLOCKS = 40
FLAG_Z = 3.0


@dataclass
class GroupImpact:
    """``table``: COLUMNS plus node, jackknife_sd, training_noise, reference_cells."""

    column: str
    table: pd.DataFrame
    training_noise: float  # NaN: no deeper stage to measure it
    stage1_epochs: dict | None = None  # node -> epochs run (None: no nodes table)
    replicates: int = 1  # > 1: combined over replicate trees (``combine_replicates``)

    @property
    def uneven_training(self) -> bool:
        """The stage-1 siblings ran different numbers of epochs: each stopped early on the
        group it holds out, so the contrast mixes training length with the group's effect
        (docs/findings/group-impact.md §4); train them with ``patience`` >= the budget."""
        return bool(self.stage1_epochs) and len(set(self.stage1_epochs.values())) > 1

    def flagged(self, sign: int = 1) -> pd.DataFrame:
        t = self.table
        return t[(sign * t["z"]) > FLAG_Z]


def _impacts(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Median-centred group effects of one stage-1 family (rows: children)."""
    e = -two_way_fit(y, w)
    return e - np.median(e)


def estimate(y: np.ndarray, w: np.ndarray, blocks: int = JACKKNIFE_BLOCKS) -> tuple[np.ndarray, np.ndarray]:
    """Impacts and their jackknife sd from ``y[k, c]`` (NaN where child k held cell c out)
    with row weights ``w[c]``; cells are dealt into ``blocks`` blocks in column order."""
    imp = _impacts(y, w)
    n_cells = y.shape[1]
    b = min(blocks, n_cells)
    if b < 2:
        return imp, np.full(len(imp), np.nan)
    block_of = np.arange(n_cells) % b
    reps = np.array([_impacts(y[:, block_of != j], w[block_of != j]) for j in range(b)])
    jack = np.sqrt((b - 1) / b * ((reps - reps.mean(axis=0)) ** 2).sum(axis=0))
    return imp, jack


def group_impact(cell_test: pd.DataFrame, plan: pd.DataFrame, metadata: pd.DataFrame, column: str,
                 n: int, nodes: pd.DataFrame | None = None) -> GroupImpact | None:
    """The estimate for a run with ``groups = column`` (None when fewer than two stage-1 nodes
    have holdout errors). ``metadata``: the results' ``cell_metadata``; ``n``: the run's N
    (the pooling rule of tree/groups.py depends on it)."""
    vals = val_sets(plan)
    ct = cell_test[["node", "cell", "n_rows", "mse"]].copy()
    ct["node"], ct["cell"] = ct["node"].astype(str), ct["cell"].astype(str)
    ct = ct[np.isfinite(ct["mse"].astype("float64")) & (ct["n_rows"] > 0)]
    if nodes is not None:
        done = set(nodes.loc[nodes["status"].astype(str) == "done", "node"].astype(str))
        ct = ct[ct["node"].isin(done)]
    kids = sorted((k for k in set(ct["node"]) & set(vals) if parent_of(k) == ROOT), key=node_sort_key)
    if len(kids) < 2:
        return None
    plan_cells = sorted(frozenset().union(*vals.values()))
    value = dict(zip(metadata["cell"].astype(str), metadata[column].astype(str)))
    parts = group_parts([value.get(c, "") or "NA" for c in plan_cells], n, column)
    part = dict(zip(plan_cells, parts.part_of_cell.tolist()))
    cells = np.array(sorted(set(ct["cell"])), dtype=object)
    col = {c: i for i, c in enumerate(cells)}
    y = (ct.pivot_table(index="node", columns="cell", values="mse", aggfunc="mean")
         .reindex(index=kids, columns=cells).to_numpy(dtype=np.float64).copy())
    w = ct.groupby("cell")["n_rows"].max().reindex(cells).to_numpy(dtype=np.float64)
    labels = []
    for i, k in enumerate(kids):
        y[i, [col[c] for c in vals[k] if c in col]] = np.nan
        labels.append(parts.labels[part[next(iter(vals[k]))]])
    imp, jack = estimate(y, w)
    con = family_contrasts(cell_test, plan, nodes)
    deeper = con[con["stage"] >= 2]
    floor = noise_floor(deeper).get(2, np.nan) if len(deeper) else np.nan
    sd = np.sqrt(jack ** 2 + (0.0 if not np.isfinite(floor) else floor ** 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sd > 0, imp / sd, 0.0)
    table = pd.DataFrame({"column": column, "value": labels, "n_cells": [len(vals[k]) for k in kids],
                          "impact": imp, "impact_sd": sd, "z": z, "node": kids, "jackknife_sd": jack,
                          "training_noise": floor, "reference_cells": np.isfinite(y).sum(axis=1)})
    epochs = None
    if nodes is not None and "epochs_run" in nodes:
        ep = nodes[nodes["node"].astype(str).isin(kids)]
        epochs = {str(k): int(e) for k, e in zip(ep["node"], ep["epochs_run"].fillna(0))}
    return GroupImpact(column, table.sort_values(["z", "value"], ascending=[False, True]).reset_index(drop=True),
                       float(floor), epochs)


def runs_group_impact(runs) -> GroupImpact | None:
    """The estimate of one run, or combined over the runs (replicates) when at least
    ``MIN_REPLICATES`` of them have one for the first run's column."""
    first = run_group_impact(runs[0]) if runs else None
    if first is None:
        return None
    est = [first] + [e for e in (run_group_impact(r) for r in runs[1:]) if e is not None and e.column == first.column]
    return combine_replicates(est) if len(est) >= MIN_REPLICATES else first


def run_group_impact(run) -> GroupImpact | None:
    """A results file's group impact: None unless it ran with ``groups`` and has ``cell_test``
    and its metadata (``results.RunTables``)."""
    column = str((run.config or {}).get("groups", "") or "")
    meta = getattr(run, "cell_metadata", None)
    if not column or run.cell_test is None or run.plan is None or meta is None or column not in meta.columns:
        return None
    return group_impact(run.cell_test, run.plan, meta, column, int(run.config.get("n", 4)), run.nodes)


MIN_REPLICATES = 3


def combine_replicates(estimates: list[GroupImpact]) -> GroupImpact:
    """Replicate trees (the same data and ``groups``, other seeds): per group the mean of the
    replicates' impacts, ``impact_sd`` = their standard deviation / sqrt(R).

    Why: one tree has one training per stage-1 sibling, and the seed-to-seed noise of a
    from-scratch training is common to all of a child's cells, so neither the jackknife
    nor the stage-2 floor (siblings fine-tuning from a trained parent) sees it
    (docs/findings/group-impact.md §6). Each replicate trains its stage 1 anew, so their
    scatter holds that noise. Groups missing from a replicate are left out; needs
    ``MIN_REPLICATES`` estimates."""
    if len(estimates) < MIN_REPLICATES:
        raise ValueError(f"combine_replicates needs >= {MIN_REPLICATES} estimates; got {len(estimates)}")
    tables = [e.table.set_index("value") for e in estimates]
    common = sorted(set.intersection(*(set(t.index) for t in tables)))
    imp = np.array([[t.loc[v, "impact"] for v in common] for t in tables])
    r = len(tables)
    mean, sd = imp.mean(axis=0), imp.std(axis=0, ddof=1) / np.sqrt(r)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sd > 0, mean / sd, 0.0)
    first = tables[0]
    table = pd.DataFrame({"column": estimates[0].column, "value": common,
                          "n_cells": [int(first.loc[v, "n_cells"]) for v in common], "impact": mean,
                          "impact_sd": sd, "z": z, "replicates": r,
                          "replicate_sd": imp.std(axis=0, ddof=1)})
    epochs = {f"{i}:{k}": v for i, e in enumerate(estimates) for k, v in (e.stage1_epochs or {}).items()}
    return GroupImpact(estimates[0].column,
                       table.sort_values(["z", "value"], ascending=[False, True]).reset_index(drop=True),
                       float("nan"), epochs or None, replicates=r)
