"""The report's view of an adaptive run's tree: which nodes exist, why, and at what cost.

A full tree needs no such section (every node of N + … + N^S exists). An adaptive run's
``nodes.expanded_by`` says why each node was created (``full_stages`` or the rule, its
score, the value and the cell that chose the parent); this module turns that into a
per-stage table, the list of expansions and an icicle picture (x: the parent's
validation range cut in N equal parts per level, y: the stage).
"""

from __future__ import annotations

import re

import pandas as pd

from hbl_mpi.report.page import Section
from hbl_mpi.tree.plan import components, parent_of

_REASON = re.compile(r"^(?P<rule>[^:]+):(?P<score>[^=]+)=(?P<value>\S+) cell=(?P<cell>\S+) parent=(?P<parent>\S+)$")


def is_adaptive(nodes: pd.DataFrame) -> bool:
    return "expanded_by" in nodes.columns and (nodes["expanded_by"].astype(str) != "").any()


def stage_counts(nodes: pd.DataFrame, n: int, s: int) -> pd.DataFrame:
    """Per stage: nodes created against the full tree's N^s, and their planned row-epochs."""
    rows = []
    for stage in range(1, s + 1):
        at = nodes[nodes["stage"] == stage]
        rows.append({"stage": stage, "created": int(len(at)), "full_tree_at_most": n ** stage,
                     "planned_row_epochs": float((at["epochs_planned"] * at["n_train_rows"]).sum())})
    return pd.DataFrame(rows)


def expansions(nodes: pd.DataFrame) -> pd.DataFrame:
    """One row per expanded parent: its stage, the rule, score name and value, the cell, children."""
    rows = {}
    for _, r in nodes.iterrows():
        m = _REASON.match(str(r["expanded_by"]))
        if not m:
            continue
        p = m["parent"]
        if p not in rows:
            rows[p] = {"parent": p, "stage": p.count("."), "rule": m["rule"], "score": m["score"],
                       "value": float(m["value"]), "cell": m["cell"], "children": 0}
        rows[p]["children"] += 1
    df = pd.DataFrame(list(rows.values()), columns=["parent", "stage", "rule", "score", "value", "cell", "children"])
    return df.sort_values(["stage", "value"], ascending=[True, False]).reset_index(drop=True)


def _span(node: str, n: int) -> tuple[float, float]:
    lo, width = 0.0, 1.0
    for k in components(node)[1:]:
        width /= n
        lo += (min(k, n) - 1) * width
    return lo, width


def fig_tree(nodes: pd.DataFrame, n: int, s: int, planted_nodes: set[str] | None = None):
    """Icicle picture of the created tree: one box per node; expanded parents darker."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    fig = Figure(figsize=(9, 0.9 * s + 1.2), layout="constrained")
    ax = fig.subplots()
    parents = {parent_of(x) for x in nodes["node"].astype(str)}
    for name, status in zip(nodes["node"].astype(str), nodes["status"].astype(str)):
        lo, w = _span(name, n)
        st = name.count(".")
        colour = "#d62728" if status != "done" else ("#1f77b4" if name in parents else "#9ecae1")
        ax.add_patch(Rectangle(
            (lo, st - 0.45), w, 0.9, facecolor=colour, edgecolor="white", linewidth=0.3))
        if planted_nodes and name in planted_nodes and name not in parents:
            ax.plot(lo + w / 2, st, marker="v", color="black", markersize=3)
    ax.set_xlim(0, 1)
    ax.set_ylim(s + 0.6, 0.4)
    ax.set_yticks(range(1, s + 1))
    ax.set_ylabel("stage")
    ax.set_xlabel("position in the plan's cell order (each level cut in N equal parts)")
    ax.set_title("Expanded tree: dark = expanded (has children), light = not expanded, red = failed; "
                 "▼ leaf validating a planted cell", fontsize=9)
    return fig


def sections(rep, runs) -> list:
    """The report's "Expanded tree" section for each adaptive run among ``runs``."""
    out = []
    for r in runs:
        if not is_adaptive(r.nodes):
            continue
        cfg = r.config or {}
        n, s = int(cfg.get("n", 4)), int(cfg.get("s", int(r.nodes["stage"].max())))
        counts = stage_counts(r.nodes, n, s)
        exp = expansions(r.nodes)
        slug = "" if len(runs) == 1 else "_" + re.sub(r"[^A-Za-z0-9]+", "_", r.label)
        rep.csv(f"expanded_tree{slug}.csv", r.nodes[["node", "parent", "stage", "status", "expanded_by"]])
        planted = None
        if r.truth is not None and len(r.cell_val):
            bad = set(r.truth["cell"].astype(str))
            planted = set(r.cell_val.loc[r.cell_val["cell"].astype(str).isin(bad), "node"].astype(str))
        png = rep.png(f"expanded_tree{slug}.png", fig_tree(r.nodes, n, s, planted))
        out.append(Section(
            f"Expanded tree (`{r.label}`)",
            f"Adaptive run (`expand = adaptive`, budget {cfg.get('expand_budget')} of the full tree's planned "
            f"row-epochs, stages 1..{cfg.get('expand_full_stages')} in full, score `{cfg.get('expand_score')}`): "
            f"{len(r.nodes)} nodes created. Each node's `expanded_by` (in expanded_tree{slug}.csv) names the rule, "
            "the score and the cell that chose its parent. Cells in subtrees never expanded keep the scores of "
            "the shallow stages that measured them.",
            png, [("nodes per stage", counts), ("expansions (rule, score, value, the cell that chose it)", exp)]))
    return out
