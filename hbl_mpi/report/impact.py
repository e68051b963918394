"""The report's impact part: two axes per cell (resist, impact), a quadrant figure and the
most harmful / most beneficial cells with their evidence (impact.py, docs/findings/impact.md §8).

Kept apart from report.py so the section can change without touching the paper's
figures; it is one of report.py's ``SECTION_BUILDERS``, and reads the estimate and the
ranking (which already carries ``impact``) from ``ReportInputs``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hbl_mpi.report.page import KIND_COLOURS, Section, make_figure

EVIDENCE = ["cell", "impact", "impact_sd", "impact_z", "impact_node", "impact_group_cells", "score", "rank",
            "combined"]


def fig_quadrant(ranking: pd.DataFrame, truth: pd.DataFrame | None):
    fig, axes = make_figure(w=7.5, h=5.2)
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


def impact_sections(inp, rep, top: int = 15) -> None:
    """The impact section: the quadrant figure, the most harmful and most beneficial cells
    with their evidence, and ``impact_contrasts.csv``."""
    result, out, truth = inp.impact, inp.ranking, inp.truth
    if result is None:
        rep.sections.append(Section(
            "Impact on the other cells",
            "Not available: these results have no `cell_test` table (written before per-cell holdout errors "
            "were recorded); run again to get the impact axis."))
        return
    rep.csv("impact_contrasts.csv", result.contrasts)
    ev = out[[c for c in EVIDENCE if c in out.columns]].copy()
    if truth is not None:
        ev.insert(1, "planted (truth)", ev["cell"].map(dict(zip(truth["cell"], truth["kind"]))).fillna(""))
    harmful = ev.sort_values(["impact", "cell"], ascending=[False, True]).head(top)
    helpful = ev.sort_values(["impact", "cell"], ascending=[True, True]).head(top)
    floors = ", ".join(f"stage {s}: {v:.3g}" for s, v in sorted(result.noise.items()))
    rep.sections.append(Section(
        "Impact on the other cells",
        "`impact`: the estimated change of the *other* cells' holdout MSE caused by learning from the cell, "
        "relative to a typical cell (> 0 harms, < 0 helps), from paired contrasts between siblings on the "
        "holdout rows (no node trains on them), attributed down the tree; the cells of one leaf share one "
        "impact (the tree cannot separate them). `impact_sd`: its noise floor (robust spread of each "
        f"stage's sibling contrasts: {floors}, MSE per group); `impact_z` = impact / sd. `score` stays the resist "
        "score; `combined` = robust z of resist + robust z of impact. Per-family contrasts: "
        "impact_contrasts.csv. How far to trust it: on synthetic data with planted cells that measurably harm "
        "the others (five data sets, up to 32 retraining seeds each), dropping the highest-impact cells helped "
        "no more than dropping random ones, while dropping the top resist cells recovered most of the gain of "
        "dropping exactly the planted cells (on the clean cells that no ranking dropped); `curate` therefore "
        "drops by resist unless told otherwise. A single cell's harm to the others is of the size of the "
        "contrasts' noise floor, part of which is the training's own chaos: `batch_order = \"family\"` with "
        "`patience` >= the epoch budget and `inherit = \"last\"` lowers the floors, but did not make the "
        "impact ranking better. The measurements: docs/findings/impact.md §8.6, §8.8, §8.9 (and the claims "
        "table of docs/findings.md). Read impact beside the resist score and the diagnosis, not alone.",
        rep.png("fig_impact_quadrant.png", fig_quadrant(out, truth)),
        [(f"the {len(harmful)} most harmful cells (highest impact)", harmful),
         (f"the {len(helpful)} most beneficial cells (lowest impact)", helpful)]))
    rep.summary["impact"] = result
