"""The paper's measurements (§3, Figs 8-14, Table 2) as pure functions of the results tables.

Every function takes the ``nodes`` table of one run (docs/design.md §6) and returns a small
DataFrame; ``by_run`` stacks the same table for several runs (one per epoch strategy)
with a ``strategy`` column, which is how the report puts strategies side by side. Nothing
here touches the file system: the tables come from ``results.read_results``.

Conventions (where the paper is loose, the choice is written here once):

* Only nodes with ``status == "done"`` and a finite val_loss are measured. A node is
  compared with its parent when the parent is done too; stage-1 nodes have no parent
  val_loss (the root is never trained), so their increase / outlier level is undefined
  (NaN), not zero.
* **Percentiles (Fig 10).** The paper's "higher percentiles indicate higher accuracy
  (lower val_loss)": its "p %" is the val_loss below which (100 - p) % of the stage's
  nodes lie, i.e. ``numpy.percentile(val_loss, 100 - p)``. So "99 %" is near the best
  node (1st percentile of val_loss) and "10 %" is the 90th percentile of val_loss.
* **Increase (Fig 11)** means ``val_loss > parent val_loss`` strictly; the fraction is
  over the stage's nodes that have a parent val_loss.
* **Increase delta (Fig 12)** = mean(val_loss - parent val_loss over increasing nodes)
  / mean(val_loss over all measured nodes of the stage).
* **Outlier level (Fig 13)** = (val_loss - parent val_loss) / parent val_loss. The paper's
  "899 of 6,820 runs (13.2 %)" divides by *all* nodes of all runs, stage 1 included
  (6,820 = 5 x 1,364); ``outlier_counts`` reports that fraction and also the fraction of
  nodes that have a parent.
* **Training hours (Table 2)** of a trajectory = the sum of ``train_s`` of its nodes (the
  final node and its ancestors) / 3600; ``wall_hours`` adds the transfer time; steps are
  summed the same way ("cumulative training steps").
* **Busy workers (Fig 14)**: a group trains one node at a time, so the number of busy
  groups at time t is the number of nodes with start <= t < stop; workers = groups x
  ``group_size`` (from the run's config).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from hbl_mpi.tree.plan import node_sort_key, parent_of, stage_of
from hbl_mpi.store.results import RunTables

PAPER_PERCENTILES = (99, 75, 50, 25, 10)
"""The paper's Fig 10 levels (higher = more accurate, see module docstring)."""


# ---------------------------------------------------------------------------
# per-node quantities
# ---------------------------------------------------------------------------
def measured(nodes: pd.DataFrame) -> pd.DataFrame:
    """Done nodes with a finite val_loss (the population every figure measures)."""
    ok = (nodes["status"] == "done") & np.isfinite(nodes["val_loss"].astype("float64"))
    return nodes.loc[ok].copy()


def with_parent(nodes: pd.DataFrame) -> pd.DataFrame:
    """Measured nodes plus ``parent_val_loss``, ``delta`` and ``outlier_level`` columns.

    ``parent_val_loss`` is NaN for stage-1 nodes and for nodes whose parent is not
    measured (failed): their delta and outlier level are NaN too.
    """
    m = measured(nodes)
    val = dict(zip(m["node"], m["val_loss"].astype("float64")))
    m["parent_val_loss"] = [val.get(p, np.nan) if s > 1 else np.nan for p, s in zip(m["parent"], m["stage"])]
    m["delta"] = m["val_loss"] - m["parent_val_loss"]
    with np.errstate(divide="ignore", invalid="ignore"):
        m["outlier_level"] = m["delta"] / m["parent_val_loss"]
    m["increased"] = m["delta"] > 0
    return m.sort_values("node", key=lambda s: s.map(node_sort_key)).reset_index(drop=True)


def _stage_fraction(m: pd.DataFrame, flag: str, total: str) -> pd.DataFrame:
    """Per stage: the ``total`` nodes, how many have ``flag`` set, and ``fraction_<flag>``."""
    g = m.groupby("stage")[flag]
    out = pd.DataFrame({total: g.size(), flag: g.sum().astype("int64")})
    out[f"fraction_{flag}"] = out[flag] / out[total]
    return out.reset_index()


def _stages(nodes: pd.DataFrame) -> list[int]:
    return sorted(int(s) for s in nodes["stage"].unique())


# ---------------------------------------------------------------------------
# Figs 8-12: one row per stage
# ---------------------------------------------------------------------------
def early_stopping(nodes: pd.DataFrame) -> pd.DataFrame:
    """Fig 8: fraction of each stage's nodes that stopped early."""
    return _stage_fraction(measured(nodes), "stopped_early", "nodes")


def epochs_run(nodes: pd.DataFrame) -> pd.DataFrame:
    """Fig 9: mean epochs actually run (and the planned budget) per stage."""
    m = measured(nodes)
    g = m.groupby("stage")
    out = pd.DataFrame({
        "nodes": g.size(),
        "mean_epochs_run": g["epochs_run"].mean(),
        "median_epochs_run": g["epochs_run"].median(),
        "epochs_planned": g["epochs_planned"].max() if "epochs_planned" in m else np.nan,
    })
    return out.reset_index()


def val_loss_percentiles(nodes: pd.DataFrame, levels=PAPER_PERCENTILES) -> pd.DataFrame:
    """Fig 10: the paper's val_loss percentiles per stage (p % -> numpy percentile 100 - p)."""
    m = measured(nodes)
    rows = []
    for stage in _stages(m):
        v = m.loc[m["stage"] == stage, "val_loss"].to_numpy(dtype=np.float64)
        row = {"stage": stage, "nodes": len(v)}
        for p in levels:
            row[f"p{p}"] = float(np.percentile(v, 100 - p))
        rows.append(row)
    return pd.DataFrame(rows, columns=["stage", "nodes"] + [f"p{p}" for p in levels])


def increase_fraction(nodes: pd.DataFrame) -> pd.DataFrame:
    """Fig 11: fraction of each stage's nodes whose val_loss increased over the parent's."""
    m = with_parent(nodes)
    return _stage_fraction(m[np.isfinite(m["parent_val_loss"])], "increased", "nodes_with_parent")


def increase_delta(nodes: pd.DataFrame) -> pd.DataFrame:
    """Fig 12: mean increase of the increasing nodes / the stage's mean val_loss."""
    m = with_parent(nodes)
    rows = []
    for stage in _stages(m):
        st = m[m["stage"] == stage]
        inc = st.loc[st["increased"], "delta"]
        mean_val = float(st["val_loss"].mean())
        mean_inc = float(inc.mean()) if len(inc) else np.nan
        rows.append({"stage": stage, "increased": int(len(inc)), "mean_increase": mean_inc,
                     "stage_mean_val_loss": mean_val,
                     "increase_delta": mean_inc / mean_val if len(inc) and mean_val > 0 else np.nan})
    out = pd.DataFrame(rows, columns=["stage", "increased", "mean_increase", "stage_mean_val_loss",
                                      "increase_delta"])
    return out[out["stage"] > 1].reset_index(drop=True)


def stage_table(nodes: pd.DataFrame) -> pd.DataFrame:
    """Figs 8-12 joined: one row per stage (the report's main CSV)."""
    out = early_stopping(nodes)
    for t in (epochs_run(nodes).drop(columns="nodes"), val_loss_percentiles(nodes).drop(columns="nodes"),
              increase_fraction(nodes), increase_delta(nodes).drop(columns="increased")):
        out = out.merge(t, on="stage", how="left")
    return out


# ---------------------------------------------------------------------------
# Fig 13: outlier levels
# ---------------------------------------------------------------------------
def outlier_levels(nodes: pd.DataFrame) -> pd.DataFrame:
    """Per node: node, stage, val_loss, parent_val_loss, outlier_level (NaN without a parent)."""
    m = with_parent(nodes)
    return m[["node", "parent", "stage", "val_loss", "parent_val_loss", "outlier_level"]]


def outlier_cdf(nodes: pd.DataFrame) -> pd.DataFrame:
    """Fig 13: the increasing nodes' outlier levels sorted ascending, with cumulative counts.

    ``cum_fraction`` is the fraction of the increasing nodes at or below the level;
    ``fraction_above`` the fraction of all nodes with a parent strictly above it.
    """
    lv = outlier_levels(nodes)
    with_p = lv[np.isfinite(lv["outlier_level"])]
    inc = with_p[with_p["outlier_level"] > 0].sort_values(["outlier_level", "node"]).reset_index(drop=True)
    n = len(inc)
    inc["rank"] = np.arange(1, n + 1)
    inc["cum_fraction"] = inc["rank"] / n if n else []
    levels = inc["outlier_level"].to_numpy()
    all_levels = np.sort(with_p["outlier_level"].to_numpy())
    inc["fraction_above"] = (len(all_levels) - np.searchsorted(all_levels, levels, side="right")) / max(
        1, len(all_levels))
    return inc[["rank", "node", "stage", "outlier_level", "cum_fraction", "fraction_above"]]


def outlier_counts(nodes: pd.DataFrame, thresholds=(1.0, 2.0)) -> pd.DataFrame:
    """Counts of nodes with outlier level above each threshold, as the paper reports them.

    ``fraction_of_all`` divides by all measured nodes (the paper's 899 / 6,820);
    ``fraction_of_compared`` by the nodes that have a parent val_loss.
    """
    lv = outlier_levels(nodes)
    n_all = len(lv)
    n_cmp = int(np.isfinite(lv["outlier_level"]).sum())
    rows = []
    for t in thresholds:
        k = int((lv["outlier_level"] > t).sum())
        rows.append({"threshold": float(t), "nodes_above": k, "nodes": n_all, "nodes_compared": n_cmp,
                     "fraction_of_all": k / n_all if n_all else np.nan,
                     "fraction_of_compared": k / n_cmp if n_cmp else np.nan})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------
# Table 2: the best final-stage trajectory
# ---------------------------------------------------------------------------
def trajectory(node: str) -> list[str]:
    """The trained nodes from stage 1 down to ``node`` (the root is never trained)."""
    out = [node]
    p = parent_of(node)
    while p is not None and stage_of(p) >= 1:
        out.append(p)
        p = parent_of(p)
    return out[::-1]


def best_trajectory(nodes: pd.DataFrame, final_stage: int | None = None) -> pd.DataFrame:
    """Table 2: the final-stage node with the lowest val_loss and its trajectory's cost.

    One row: node, stage, training_hours (sum of train_s / 3600 along the trajectory),
    wall_hours (train_s + transfer_s), steps (cumulative), epochs (cumulative), val_loss
    and test_loss of the final node. ``final_stage`` defaults to the deepest stage with a
    measured node. An empty frame when no node is measured.
    """
    cols = ["node", "stage", "training_hours", "wall_hours", "steps", "epochs", "val_loss", "test_loss"]
    m = measured(nodes)
    if m.empty:
        return pd.DataFrame(columns=cols)
    stage = int(final_stage if final_stage is not None and (m["stage"] == final_stage).any()
                else m["stage"].max())
    last = m[m["stage"] == stage].sort_values(["val_loss", "node"]).iloc[0]
    path = trajectory(str(last["node"]))
    by = nodes.set_index("node")
    t = by.loc[[p for p in path if p in by.index]]
    train_s = t["train_s"].astype("float64").fillna(0.0) if "train_s" in t else pd.Series(0.0, index=t.index)
    transfer = (t["transfer_s"].astype("float64").fillna(0.0) if "transfer_s" in t
                else pd.Series(0.0, index=t.index))
    row = {
        "node": str(last["node"]), "stage": stage,
        "training_hours": float(train_s.sum()) / 3600.0,
        "wall_hours": float((train_s + transfer).sum()) / 3600.0,
        "steps": int(t["steps"].fillna(0).sum()) if "steps" in t else 0,
        "epochs": int(t["epochs_run"].fillna(0).sum()) if "epochs_run" in t else 0,
        "val_loss": float(last["val_loss"]),
        "test_loss": float(last["test_loss"]) if "test_loss" in last else np.nan,
    }
    return pd.DataFrame([row], columns=cols)


def compute_totals(nodes: pd.DataFrame) -> dict:
    """The whole run's cost: node count, epochs, training row-epochs, train seconds."""
    done = nodes[nodes["status"] == "done"]
    ep = done["epochs_run"].fillna(0).astype("float64") if "epochs_run" in done else pd.Series(dtype=float)
    rows = done["n_train_rows"].fillna(0).astype("float64") if "n_train_rows" in done else 0.0
    return {
        "nodes_done": int(len(done)),
        "nodes_failed": int((nodes["status"] == "failed").sum()),
        "nodes_skipped": int((nodes["status"] == "skipped").sum()),
        "epochs": int(ep.sum()),
        "row_epochs": float((ep * rows).sum()),
        "steps": int(done["steps"].fillna(0).sum()) if "steps" in done else 0,
        "train_hours": float(done["train_s"].fillna(0).sum()) / 3600 if "train_s" in done else np.nan,
    }


def failed_nodes(nodes: pd.DataFrame) -> pd.DataFrame:
    """Every failed node with its error and how many descendants were skipped because of it.

    A partial run (exit status 3) is only as useful as the list of what is missing: the
    skipped nodes are counted under the failed ancestor their error names.
    """
    cols = ["node", "stage", "status", "error", "skipped_below"]
    failed = nodes[nodes["status"] == "failed"]
    if failed.empty:
        return pd.DataFrame(columns=cols)
    errors = nodes["error"].astype(str) if "error" in nodes else pd.Series("", index=nodes.index)
    skipped = errors[nodes["status"] == "skipped"]
    out = pd.DataFrame({
        "node": failed["node"].to_numpy(), "stage": failed["stage"].to_numpy(), "status": "failed",
        "error": errors[failed.index].to_numpy(),
        "skipped_below": [int((skipped == f"ancestor {n} failed").sum()) for n in failed["node"]],
    })
    order = sorted(range(len(out)), key=lambda i: node_sort_key(out["node"].iloc[i]))
    return out.iloc[order].reset_index(drop=True)[cols]


# ---------------------------------------------------------------------------
# Fig 14: busy workers over time
# ---------------------------------------------------------------------------
def busy_workers(nodes: pd.DataFrame, group_size: int = 1) -> pd.DataFrame:
    """Fig 14: a step function (time, busy_groups, busy_workers) from the nodes' start/stop.

    Every node with finite start and stop (done or failed) occupies its group over
    [start, stop). Each row gives the count from ``time`` until the next row's time;
    the first row is at the earliest start and the last (count 0) at the latest stop.
    """
    cols = ["time", "busy_groups", "busy_workers"]
    if "start" not in nodes or "stop" not in nodes:
        return pd.DataFrame(columns=cols)
    st = nodes["start"].astype("float64").to_numpy()
    sp = nodes["stop"].astype("float64").to_numpy()
    ok = np.isfinite(st) & np.isfinite(sp) & (sp >= st)
    st, sp = st[ok], sp[ok]
    if len(st) == 0:
        return pd.DataFrame(columns=cols)
    times = np.concatenate([st, sp])
    step = np.concatenate([np.ones(len(st), dtype=np.int64), -np.ones(len(sp), dtype=np.int64)])
    order = np.lexsort((step, times))  # at equal times, stops (-1) before starts (+1)
    times, step = times[order], step[order]
    busy = np.cumsum(step)
    # keep the last count at each distinct time
    last = np.r_[times[1:] != times[:-1], True]
    t, b = times[last], busy[last]
    return pd.DataFrame({"time": t, "busy_groups": b.astype("int64"),
                         "busy_workers": (b * int(group_size)).astype("int64")})


def utilisation(nodes: pd.DataFrame, group_size: int = 1) -> dict:
    """Mean busy groups over the run's span, the peak, and the fraction of the groups seen."""
    bw = busy_workers(nodes, group_size)
    if bw.empty:
        return {"span_s": 0.0, "mean_busy_groups": np.nan, "peak_busy_groups": 0, "groups": 0,
                "utilisation": np.nan}
    t = bw["time"].to_numpy()
    b = bw["busy_groups"].to_numpy()
    span = float(t[-1] - t[0])
    area = float(np.sum(b[:-1] * np.diff(t)))
    groups = int(nodes.loc[np.isfinite(nodes["start"].astype("float64")), "group"].nunique()) \
        if "group" in nodes else int(b.max())
    groups = max(groups, int(b.max()))
    mean = area / span if span > 0 else float(b.max())
    return {"span_s": span, "mean_busy_groups": mean, "peak_busy_groups": int(b.max()), "groups": groups,
            "utilisation": mean / groups if groups else np.nan}


# ---------------------------------------------------------------------------
# several runs side by side
# ---------------------------------------------------------------------------
def unique_labels(runs: list[RunTables]) -> list[RunTables]:
    """Make run labels unique: repeated strategies become ``EXP2 #1``, ``EXP2 #2``, ..."""
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.label] = counts.get(r.label, 0) + 1
    seen: dict[str, int] = {}
    for r in runs:
        if counts[r.label] > 1:
            base = r.label
            seen[base] = seen.get(base, 0) + 1
            r.label = f"{base} #{seen[base]}"
    return runs


def by_run(runs: list[RunTables], fn: Callable[..., pd.DataFrame], **kwargs) -> pd.DataFrame:
    """``fn(run.nodes, **kwargs)`` for every run, stacked with a leading ``strategy`` column."""
    parts = []
    for r in runs:
        t = fn(r.nodes, **kwargs)
        t.insert(0, "strategy", r.label)
        parts.append(t)
    if not parts:
        return pd.DataFrame()
    return pd.concat(parts, ignore_index=True)


def best_trajectories(runs: list[RunTables]) -> pd.DataFrame:
    """Table 2 for several runs: one row per strategy."""
    parts = []
    for r in runs:
        t = best_trajectory(r.nodes, r.final_stage)
        t.insert(0, "strategy", r.label)
        parts.append(t)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
