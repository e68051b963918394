"""Rank the cell lines by how much they resist learning, from the tree's per-cell errors.

Why this works: a node validates only on cells that neither it nor any ancestor trained
on (docs/design.md §3), so ``cell_val`` holds, for every cell and every stage, one *held-out*
error from a model trained on a growing share of the other cells (stage s trains on
about 1 - N^-s of them). A cell whose responses contradict what the rest of the data
teaches (noisy labels, a bias, a misidentified expression profile) keeps a large
held-out error at every stage, while an ordinary cell's error falls as the models see
more data. Each stage is compared with its own typical cell (the median per-cell MSE of
that stage), which removes the stage-to-stage improvement of the models.

The per-cell / per-stage table is built once (``cell_stage_table``); every candidate
score in ``METHODS`` is a function of it, so they can be compared on the same runs
(``compare_methods``; the choice of ``DEFAULT_METHOD`` and the measurements behind it
are in docs/findings/detection.md §2). ``detection_metrics`` scores any ranking against the planted
``truth`` (AUROC, average precision, precision@k), overall and per anomaly kind; the
baselines (``baselines.py``) are scored by the same function.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from hbl_mpi.analysis.paper_stats import with_parent
from hbl_mpi.analysis.robust import MAD_SCALE
from hbl_mpi.tree.plan import stage_of

EPS = 1e-12


# ---------------------------------------------------------------------------
# the per-cell, per-stage table
# ---------------------------------------------------------------------------
def cell_stage_table(cell_val: pd.DataFrame, nodes: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (cell, stage): the held-out MSE of the node validating the cell there.

    Columns: cell, stage, node, n_rows, mse, stage_median (median per-cell MSE of the
    stage), log_ratio = ln(mse / stage_median), robust_z (the log MSE's robust z-score
    within the stage: (x - median) / (1.4826 MAD)), and, when ``nodes`` is given, the
    node's outlier_level, val_loss and parent_val_loss. Only nodes that are done (when
    ``nodes`` is given) and finite MSEs are used.
    """
    cv = cell_val[["node", "cell", "mse"] + (["n_rows"] if "n_rows" in cell_val else [])].copy()
    cv["node"] = cv["node"].astype(str)
    cv["cell"] = cv["cell"].astype(str)
    if "n_rows" not in cv:
        cv["n_rows"] = 1
    cv = cv[np.isfinite(cv["mse"].astype("float64"))]
    if nodes is not None:
        wp = with_parent(nodes)[["node", "val_loss", "parent_val_loss", "outlier_level"]]
        cv = cv[cv["node"].isin(set(wp["node"]))].merge(wp, on="node", how="left")
    cv["stage"] = [stage_of(n) for n in cv["node"]]
    logm = np.log(np.maximum(cv["mse"].to_numpy(dtype=np.float64), EPS))
    cv["log_mse"] = logm
    g = cv.groupby("stage")["log_mse"]
    med_log = g.transform("median")
    mad = (cv["log_mse"] - med_log).abs().groupby(cv["stage"]).transform("median")
    cv["stage_median"] = cv.groupby("stage")["mse"].transform("median")
    cv["log_ratio"] = logm - np.log(np.maximum(cv["stage_median"].to_numpy(dtype=np.float64), EPS))
    cv["robust_z"] = (cv["log_mse"] - med_log) / np.maximum(MAD_SCALE * mad, 1e-9)
    cols = ["cell", "stage", "node", "n_rows", "mse", "stage_median", "log_ratio", "robust_z"]
    if nodes is not None:
        cols += ["outlier_level", "val_loss", "parent_val_loss"]
    return cv[cols].sort_values(["cell", "stage"]).reset_index(drop=True)


def _wide(t: pd.DataFrame, col: str) -> pd.DataFrame:
    return t.pivot_table(index="cell", columns="stage", values=col, aggfunc="mean")


# ---------------------------------------------------------------------------
# candidate scores (higher = more suspicious); each: cell-stage table -> Series by cell
# ---------------------------------------------------------------------------
def _deepest(t: pd.DataFrame, col: str) -> pd.Series:
    last = t.sort_values("stage").groupby("cell").tail(1).set_index("cell")
    return last[col]


def score_deepest_log_ratio(t: pd.DataFrame) -> pd.Series:
    """ln(MSE / stage median) at the deepest stage only (the model trained on the most data)."""
    return _deepest(t, "log_ratio")


def score_mean_log_ratio(t: pd.DataFrame) -> pd.Series:
    """Mean over stages of ln(MSE / stage median)."""
    return _wide(t, "log_ratio").mean(axis=1)


def score_max_log_ratio(t: pd.DataFrame) -> pd.Series:
    """Largest ln(MSE / stage median) over stages."""
    return _wide(t, "log_ratio").max(axis=1)


def score_min_log_ratio(t: pd.DataFrame) -> pd.Series:
    """Smallest ln(MSE / stage median) over stages: high only if the cell is bad at *every* stage."""
    return _wide(t, "log_ratio").min(axis=1)


def score_mean_robust_z(t: pd.DataFrame) -> pd.Series:
    """Mean over stages of the robust z-score of ln MSE within the stage."""
    return _wide(t, "robust_z").mean(axis=1)


def score_depth_weighted(t: pd.DataFrame) -> pd.Series:
    """Stage-weighted mean of ln(MSE / stage median), weight = stage (deeper = more training data)."""
    w = _wide(t, "log_ratio")
    weights = np.asarray(w.columns, dtype=np.float64)
    mask = w.notna().to_numpy()
    vals = np.nan_to_num(w.to_numpy())
    return pd.Series((vals * weights).sum(1) / np.maximum((mask * weights).sum(1), EPS), index=w.index)


def score_pooled_ratio(t: pd.DataFrame) -> pd.Series:
    """ln(sum_s rows*MSE / sum_s rows*median): stages pooled by their number of rows."""
    x = t.assign(a=t["n_rows"] * t["mse"], b=t["n_rows"] * t["stage_median"]).groupby("cell")[["a", "b"]].sum()
    return np.log(np.maximum(x["a"], EPS) / np.maximum(x["b"], EPS))


def score_node_outlier(t: pd.DataFrame) -> pd.Series:
    """Mean outlier level of the nodes that validated the cell (stages >= 2; the paper's signal)."""
    if "outlier_level" not in t:
        raise ValueError("node_outlier needs the nodes table")
    w = _wide(t, "outlier_level")
    s = w.mean(axis=1)
    return s.fillna(s.min() if s.notna().any() else 0.0)


METHODS: dict[str, Callable[[pd.DataFrame], pd.Series]] = {
    "deepest_log_ratio": score_deepest_log_ratio,
    "mean_log_ratio": score_mean_log_ratio,
    "max_log_ratio": score_max_log_ratio,
    "min_log_ratio": score_min_log_ratio,
    "mean_robust_z": score_mean_robust_z,
    "depth_weighted": score_depth_weighted,
    "pooled_ratio": score_pooled_ratio,
    "node_outlier": score_node_outlier,
}
DEFAULT_METHOD = "depth_weighted"
"""Chosen by measurement (docs/findings/detection.md §2, "Choosing the cell score")."""


def train_added_blame(plan: pd.DataFrame, nodes: pd.DataFrame) -> pd.Series:
    """Per cell: mean outlier level of the nodes whose training set the cell *joined*.

    The paper's reading of an outlier node ("data subsets that decrease the NN
    accuracy"): a node's new training cells are blamed for its increase in val_loss.
    Evidence only (it is not in ``METHODS``): it needs the plan table, and the tree
    confounds it with the node's own validation cells (see docs/findings/detection.md §2).
    """
    lv = with_parent(nodes).set_index("node")["outlier_level"]
    added = plan[plan["role"].astype(str) == "train_added"][["node", "cell"]].copy()
    added["node"] = added["node"].astype(str)
    added["cell"] = added["cell"].astype(str)
    added["level"] = added["node"].map(lv)
    return added.dropna(subset=["level"]).groupby("cell")["level"].mean()


# ---------------------------------------------------------------------------
# the ranking
# ---------------------------------------------------------------------------
def rank_scores(score: pd.Series) -> pd.DataFrame:
    """Series (cell -> score) -> DataFrame cell, score, rank (1 = most suspicious; ties by cell id)."""
    df = pd.DataFrame({"cell": score.index.astype(str), "score": score.to_numpy(dtype=np.float64)})
    df["score"] = df["score"].fillna(-np.inf)
    df = df.sort_values(["score", "cell"], ascending=[False, True], kind="mergesort").reset_index(drop=True)
    df["rank"] = np.arange(1, len(df) + 1)
    return df


def rank_cells(cell_val: pd.DataFrame, nodes: pd.DataFrame | None = None, method: str = DEFAULT_METHOD,
               plan: pd.DataFrame | None = None) -> pd.DataFrame:
    """The cell ranking with its evidence.

    Columns: cell, score, rank, then the evidence: node (the deepest node validating
    the cell, where it was held out from the most training data), stage, mse (that
    node's per-cell validation MSE), stage_median_mse, mse_ratio (mse / stage median),
    outlier_level, node_val_loss and parent_val_loss (of that node), stages (how many
    stages measured the cell), mean_log_ratio, max_log_ratio, worst_stage (stage of
    the largest log ratio), n_rows (validation rows at the deepest node) and, when the
    plan is given, train_added_blame.
    """
    if method not in METHODS:
        raise ValueError(f"unknown ranking method {method!r}; one of {', '.join(METHODS)}")
    t = cell_stage_table(cell_val, nodes)
    if t.empty:
        return pd.DataFrame(columns=["cell", "score", "rank"])
    ranked = rank_scores(METHODS[method](t))
    last = t.sort_values("stage").groupby("cell").tail(1).set_index("cell")
    wide = _wide(t, "log_ratio")
    ev = pd.DataFrame({
        "node": last["node"], "stage": last["stage"], "mse": last["mse"],
        "stage_median_mse": last["stage_median"], "mse_ratio": last["mse"] / last["stage_median"],
    })
    if nodes is not None:
        ev["outlier_level"] = last["outlier_level"]
        ev["node_val_loss"] = last["val_loss"]
        ev["parent_val_loss"] = last["parent_val_loss"]
    ev["stages"] = wide.notna().sum(axis=1)
    ev["mean_log_ratio"] = wide.mean(axis=1)
    ev["max_log_ratio"] = wide.max(axis=1)
    ev["worst_stage"] = wide.idxmax(axis=1)
    ev["n_rows"] = last["n_rows"]
    if plan is not None and nodes is not None:
        ev["train_added_blame"] = train_added_blame(plan, nodes)
    ev.index = ev.index.astype(str)
    return ranked.merge(ev, left_on="cell", right_index=True, how="left")


def combine_rankings(rankings: list[pd.DataFrame]) -> pd.DataFrame:
    """Several runs on the same data: mean of their scores per cell, ranked again."""
    scores = pd.concat([r.set_index("cell")["score"].replace(-np.inf, np.nan) for r in rankings], axis=1)
    return rank_scores(scores.mean(axis=1))


# ---------------------------------------------------------------------------
# detection scores against the planted truth
# ---------------------------------------------------------------------------
def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else np.nan


def _ap(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, s)) if y.sum() > 0 else np.nan


def _precision_at_k(cells: np.ndarray, y: np.ndarray, s: np.ndarray, k: int) -> float:
    if k <= 0:
        return np.nan
    order = np.lexsort((cells, -s))  # by score descending, ties by cell id
    return float(y[order[:k]].sum() / k)


def detection_metrics(score: pd.Series, truth: pd.DataFrame, cells=None) -> pd.DataFrame:
    """AUROC, average precision and precision@k of a score (cell -> higher = more suspicious).

    ``cells`` is the population (default: the scored cells plus the planted ones); cells
    without a score rank last (-inf). Rows: ``all`` (every planted cell vs every clean
    cell, k = number of planted cells) and one per anomaly kind (that kind's cells vs the
    clean cells, k = the kind's count). Columns: kind, positives, negatives, k, auroc,
    average_precision, precision_at_k, unscored.
    """
    score = score.copy()
    score.index = score.index.astype(str)
    kinds = dict(zip(truth["cell"].astype(str), truth["kind"].astype(str)))
    pop = np.array(sorted(set(score.index) | set(kinds) if cells is None else {str(c) for c in cells}),
                   dtype=object)
    s = score.reindex(pop).to_numpy(dtype=np.float64)
    unscored = int(np.isnan(s).sum())
    s = np.where(np.isfinite(s), s, -np.inf)
    finite_min = s[np.isfinite(s)].min() if np.isfinite(s).any() else 0.0
    s = np.where(np.isfinite(s), s, finite_min - 1.0)  # sklearn wants finite scores
    kind = np.array([kinds.get(c, "") for c in pop], dtype=object)
    rows = []
    for name in ["all"] + sorted(set(kinds.values())):
        pos = kind != "" if name == "all" else kind == name
        keep = pos | (kind == "")
        y = pos[keep].astype(np.int64)
        ss, cc = s[keep], pop[keep].astype(str)
        rows.append({"kind": name, "positives": int(y.sum()), "negatives": int(len(y) - y.sum()),
                     "k": int(y.sum()), "auroc": _auroc(y, ss), "average_precision": _ap(y, ss),
                     "precision_at_k": _precision_at_k(cc, y, ss, int(y.sum())), "unscored": unscored})
    return pd.DataFrame(rows)


def compare_methods(cell_val: pd.DataFrame, nodes: pd.DataFrame, truth: pd.DataFrame,
                    methods=None) -> pd.DataFrame:
    """``detection_metrics`` of every candidate score on one run (the evidence for the choice)."""
    t = cell_stage_table(cell_val, nodes)
    parts = []
    for name in methods or METHODS:
        d = detection_metrics(METHODS[name](t), truth)
        d.insert(0, "method", name)
        parts.append(d)
    return pd.concat(parts, ignore_index=True)
