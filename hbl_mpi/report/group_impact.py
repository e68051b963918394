"""The report's "Group impact" part: ``group_impact.csv`` and its section (issue 30 part 3).

One of build.py's ``SECTION_BUILDERS``. Only for a run made with ``groups = "COLUMN"``
(the root's children hold out one metadata group each); any other run gets no section,
so its report is what it was. The estimator and its derivation: analysis/group_impact.py,
docs/findings/group-impact.md.
"""

from __future__ import annotations

import time

import numpy as np

from hbl_mpi.analysis import group_impact as GI
from hbl_mpi.report.page import Section


def _names(t) -> str:
    return ", ".join(f"{v} (impact {i:+.3g} ± {s:.2g}, z = {z:+.1f}, {n} cells)"
                     for v, i, s, z, n in zip(t["value"], t["impact"], t["impact_sd"], t["z"], t["n_cells"]))


def group_impact_sections(inp, rep) -> None:
    """group_impact.csv, and a section naming the groups beyond FLAG_Z sd and those within noise."""
    run = inp.runs[0]
    if not str((run.config or {}).get("groups", "") or ""):
        return
    t0 = time.perf_counter()
    gi = GI.runs_group_impact(getattr(inp, "same_data", None) or [run])
    rep.summary["group_impact_seconds"] = time.perf_counter() - t0
    if gi is None:
        rep.sections.append(Section("Group impact", "This run has `groups` set, but no group impact: fewer than "
                                    "two stage-1 nodes have holdout errors (`cell_test`), or the results carry "
                                    "no cell metadata with that column."))
        return
    rep.csv("group_impact.csv", gi.table[GI.COLUMNS])
    rep.summary["group_impact"] = gi
    t = gi.table
    harm, helps = gi.flagged(+1), gi.flagged(-1)
    quiet = t[np.abs(t["z"]) <= GI.FLAG_Z]
    noise = (f"combined over {gi.replicates} replicate trees (the runs given to `report` on this data): `impact` is "
             "the mean of their impacts and `impact_sd` their standard deviation / sqrt(R), which holds the "
             "from-scratch training noise of the stage-1 siblings" if gi.replicates > 1 else
             "the training-noise term is the stage-2 noise floor "
             f"({gi.training_noise:.3g} MSE)" if np.isfinite(gi.training_noise) else
             "this run has one stage, so the sd holds no training-noise term (the reference-sampling "
             "jackknife alone): run with s >= 2 before trusting a z")
    if gi.replicates == 1:
        noise += (f". One tree: the stage-2 floor misses most of the stage-1 siblings' own training noise "
                  f"(docs/findings/group-impact.md §6); give `report` {GI.MIN_REPLICATES} or more replicate runs "
                  "(other seeds, s = 1 suffices) for an sd that holds it")
    text = (f"Each stage-1 node held out one group of `{gi.column}`; siblings start from the same state, so the "
            "difference of their holdout MSE on the *other* groups' cells (a two-way fit, cells weighted by "
            "their holdout rows) is the effect of learning each group, here relative to the median group "
            "(`impact` > 0: learning the group raises the other groups' holdout MSE). `impact_sd`: "
            + ("" if gi.replicates > 1 else "a delete-one-block jackknife over the reference cells, in quadrature "
               "with the training noise; ")
            + f"{noise}. Derivation and its check on known truth: docs/findings/group-impact.md. "
            + (f"Harms the others beyond {GI.FLAG_Z:g} sd: {_names(harm)}. " if len(harm) else
               f"No group harms the others beyond {GI.FLAG_Z:g} sd. ")
            + (f"Helps them beyond {GI.FLAG_Z:g} sd: {_names(helps)}. " if len(helps) else "")
            + (f"Within noise (|z| <= {GI.FLAG_Z:g}): {', '.join(quiet['value'])}. " if len(quiet) else "")
            + (f"**Warning**: the stage-1 nodes ran different numbers of epochs ({min(gi.stage1_epochs.values())} "
               f"to {max(gi.stage1_epochs.values())}): each stopped early on the group it holds out, so these "
               "contrasts mix training length with the groups' effects (a group whose labels disagree with the "
               "rest stops its node early and looks beneficial). Rerun with `patience` >= the stage-1 epoch "
               "budget, `inherit = \"last\"` and `batch_order = \"family\"` (docs/findings/group-impact.md §4-5). "
               if gi.uneven_training else "")
            + "To test a flagged group: `curate --drop-group COLUMN=VALUE`, retrain, and compare the other "
              "cells' test MSE over seeds.")
    rep.sections.append(Section("Group impact", text, None, [("group impact (group_impact.csv)", t[GI.COLUMNS])]))
