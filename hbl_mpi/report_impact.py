"""The report's impact part: two axes per cell (resist, impact), a quadrant figure and the
most harmful / most beneficial cells with their evidence (impact.py, docs/findings.md §7).

Kept apart from report.py so the section can change without touching the paper's
figures; report.build calls ``impact_section`` once with the ranking it built.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import impact as I
from .analysis import RunTables

EVIDENCE = ["cell", "impact", "impact_sd", "impact_z", "impact_node", "impact_group_cells", "score", "rank",
            "combined"]


def run_impact(run: RunTables) -> I.ImpactResult | None:
    """The run's impact estimate, or None when the results predate ``cell_test`` (or lack a plan)."""
    if run.cell_test is None or run.plan is None or not len(run.cell_test):
        return None
    return I.cell_impact(run.cell_test, run.plan, run.nodes)


def fig_quadrant(ranking: pd.DataFrame, truth: pd.DataFrame | None):
    from .report import KIND_COLOURS, _figure

    fig, axes = _figure(w=7.5, h=5.2)
    ax = axes[0, 0]
    kinds = dict(zip(truth["cell"], truth["kind"])) if truth is not None else {}
    t = ranking.replace([np.inf, -np.inf], np.nan).dropna(subset=["score", "impact"])
    kind = t["cell"].map(kinds).fillna("")
    for k in [""] + sorted(set(kinds.values())):
        sel = t[kind == k]
        if len(sel):
            ax.scatter(sel["score"], sel["impact"], s=14 if k == "" else 30, alpha=0.6 if k == "" else 0.9,
                       color=KIND_COLOURS.get(k, "k"), label=(f"planted {k}" if k else
                                                             ("not planted" if kinds else "cells")))
    ax.axhline(0.0, color="k", lw=0.8)
    ax.axvline(float(t["score"].median()) if len(t) else 0.0, color="k", lw=0.8, ls=":")
    ax.set_xlabel("resist: depth-weighted ln(held-out MSE / stage median)  (higher = harder to learn)")
    ax.set_ylabel("impact: Δ other cells' holdout MSE per cell  (> 0 harms)")
    ax.set_title("Two axes per cell: does the model learn it, does learning it hurt the others?", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def impact_section(rep, ranking: pd.DataFrame, run: RunTables, truth: pd.DataFrame | None,
                   top: int = 15):
    """``ranking`` with the impact columns, and the impact section (its figure and CSV added to ``rep``)."""
    from .report import Section

    result = run_impact(run)
    if result is None:
        return ranking, Section(
            "Impact on the other cells",
            "Not available: these results have no `cell_test` table (written before per-cell holdout errors "
            "were recorded); run again to get the impact axis.")
    out = I.add_impact(ranking, result)
    rep.csv("impact_contrasts.csv", result.contrasts)
    ev = out[[c for c in EVIDENCE if c in out.columns]].copy()
    if truth is not None:
        ev.insert(1, "planted (truth)", ev["cell"].map(dict(zip(truth["cell"], truth["kind"]))).fillna(""))
    harmful = ev.sort_values(["impact", "cell"], ascending=[False, True]).head(top)
    helpful = ev.sort_values(["impact", "cell"], ascending=[True, True]).head(top)
    floors = ", ".join(f"stage {s}: {v:.3g}" for s, v in sorted(result.noise.items()))
    section = Section(
        "Impact on the other cells",
        "`impact`: the estimated change of the *other* cells' holdout MSE caused by learning from the cell, "
        "relative to a typical cell (> 0 harms, < 0 helps), from paired contrasts between siblings on the "
        "holdout rows (no node trains on them), attributed down the tree; the cells of one leaf share one "
        "impact (the tree cannot separate them). `impact_sd`: its noise floor (robust spread of each "
        f"stage's sibling contrasts: {floors}, MSE per group); `impact_z` = impact / sd. `score` stays the resist "
        "score; `combined` = robust z of resist + robust z of impact. Per-family contrasts: "
        "impact_contrasts.csv.",
        rep.png("fig_impact_quadrant.png", fig_quadrant(out, truth)),
        [(f"the {len(harmful)} most harmful cells (highest impact)", harmful),
         (f"the {len(helpful)} most beneficial cells (lowest impact)", helpful)])
    rep.summary["impact"] = result
    return out, section
