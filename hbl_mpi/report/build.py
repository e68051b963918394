"""Build the report of one or several runs: the paper's figures, CSV tables, the cell
ranking, detection scores, ``report.md`` and ``report.html`` (docs/design.md §7).

Everything is computed first (``build``: reading every input, the baselines' training)
and written last (``write``), each file through a temporary name and ``os.replace``, so
bad input leaves nothing behind and a crash leaves no half-written file. Figures use
``matplotlib.figure.Figure`` directly (the Agg canvas, no pyplot global state).

The report is made of parts, each built by one *section builder* ``(inp, rep) -> None``
listed in :data:`SECTION_BUILDERS`: run totals, the paper's figures, the cell ranking,
detection (with the baselines) and the summary. A builder reads :class:`ReportInputs`
(the runs, the options and the cell ranking, computed once and shared) and adds files
(``rep.csv``, ``rep.png``) and :class:`Section` s to the :class:`Report`. A new part is
one more builder in that list.
"""

from __future__ import annotations

import os
from typing import Callable

import pandas as pd

from hbl_mpi.analysis import paper_stats as A
from hbl_mpi.analysis import ranking as R
from hbl_mpi.analysis.enrichment import sentence as enrichment_sentence
from hbl_mpi.core.errors import InputError
from hbl_mpi.report import cross_study
from hbl_mpi.report import figures as F
from hbl_mpi.report.cells import cell_page_sections, diagnosis_sections
from hbl_mpi.report.group_impact import group_impact_sections
from hbl_mpi.report.enrichment import enrichment_sections
from hbl_mpi.report.impact import impact_sections
from hbl_mpi.report.inputs import ReportInputs, _data_path, load_runs, model_line
from hbl_mpi.report.page import Report, Section, slug
from hbl_mpi.report.render import (  # noqa: F401 (the report's API)
    html_table,
    markdown_table,
    render_html,
    render_markdown,
    write,
)
from hbl_mpi.report.tree_view import sections as tree_sections

SectionBuilder = Callable[[ReportInputs, Report], None]
"""A part of the report: reads the inputs, adds files and sections to the report (and may
leave results in ``rep.summary`` for the command's output)."""


def run_sections(inp: ReportInputs, rep: Report) -> None:
    """Run totals and, for a partial run, the failed nodes and what they left untrained."""
    runs = inp.runs
    totals = pd.DataFrame([{"strategy": r.label, **model_line(r), **A.compute_totals(r.nodes),
                            **A.utilisation(r.nodes, r.group_size)} for r in runs])
    rep.csv("run_totals.csv", totals)
    rep.sections.append(Section(
        "Run totals", "The model (name, source hash, parameters; docs/models.md), nodes, epochs, training "
        "row-epochs (epochs x training rows) and time per run; "
        "utilisation = mean busy groups / groups over the run's span.", None, [("run_totals.csv", totals)]))
    rep.summary["totals"] = totals
    failed = pd.concat([A.failed_nodes(r.nodes).assign(strategy=r.label) for r in runs], ignore_index=True)
    if len(failed):
        rep.csv("failed_nodes.csv", failed)
        skipped = [f"`{r.label}`: " + ", ".join(r.nodes.loc[r.nodes["status"] == "skipped", "node"].head(20))
                   for r in runs if (r.nodes["status"] == "skipped").any()]
        rep.sections.append(Section(
            "Failed nodes",
            f"{len(failed)} node(s) failed (an exception or a non-finite loss while training); their "
            f"descendants were skipped, never trained: the run is partial. `run --restart` with the same "
            f"--out trains them again. Skipped: {'; '.join(skipped) or 'none'}.",
            None, [("failed_nodes.csv", failed)]))


def _pick(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    return df[[c for c in ["strategy"] + cols if c in df.columns]]


def paper_sections(inp: ReportInputs, rep: Report) -> None:
    """The paper's figures and tables (Figs 7-14, Table 2), strategies side by side."""
    runs, labels = inp.runs, inp.labels
    st = A.by_run(runs, A.stage_table)
    rep.csv("stage_table.csv", st)
    t2 = A.best_trajectories(runs)
    rep.csv("table2_best_trajectory.csv", t2)
    lv = A.by_run(runs, A.outlier_levels)
    rep.csv("outlier_levels.csv", lv)
    cdfs = A.by_run(runs, A.outlier_cdf)
    counts = A.by_run(runs, A.outlier_counts)
    rep.csv("outlier_counts.csv", counts)
    busy = pd.concat([A.busy_workers(r.nodes, r.group_size).assign(strategy=r.label) for r in runs],
                     ignore_index=True)
    rep.csv("busy_workers.csv", busy)
    later = st[st["stage"] > 1]
    rep.sections += [
        Section("Fig. 7: trajectories", "Every leaf's path through the tree (val_loss of each node on it).",
                rep.png("fig07_trajectories.png", F.fig_trajectories(runs))),
        Section("Fig. 8: early stopping", "Fraction of each stage's nodes that stopped early (patience on val_loss).",
                rep.png("fig08_early_stop.png", F.fig_early_stop(st, labels)),
                [("stage_table.csv (part)", _pick(st, ["stage", "nodes", "stopped_early", "fraction_stopped_early"]))]),
        Section("Fig. 9: epochs trained", "Mean epochs actually run per node by stage, beside the strategy's budget.",
                rep.png("fig09_epochs.png", F.fig_epochs(st, labels)),
                [("stage_table.csv (part)", _pick(st, ["stage", "mean_epochs_run", "median_epochs_run",
                                                       "epochs_planned"]))]),
        Section("Fig. 10: val_loss percentiles",
                "The paper's percentiles: p % is the val_loss below which (100 - p) % of the stage's nodes lie, "
                "so 99 % is near the best node and 10 % near the worst.",
                rep.png("fig10_val_loss_percentiles.png", F.fig_percentiles(st, labels)),
                [("stage_table.csv (part)", _pick(st, ["stage"] + [f"p{p}" for p in A.PAPER_PERCENTILES]))]),
        Section("Table 2: the best final-stage trajectory",
                "The final-stage node with the lowest val_loss; hours and steps summed over it and its ancestors.",
                None, [("table2_best_trajectory.csv", t2)]),
        Section("Fig. 11: val_loss increases",
                "Fraction of each stage's nodes whose val_loss is above their parent's (stage 1 has no parent).",
                rep.png("fig11_increase_fraction.png", F.fig_increase(later, labels)),
                [("stage_table.csv (part)", _pick(later, ["stage", "nodes_with_parent", "increased",
                                                          "fraction_increased"]))]),
        Section("Fig. 12: increase delta",
                "Mean increase of the increasing nodes divided by the stage's mean val_loss.",
                rep.png("fig12_increase_delta.png", F.fig_delta(later, labels)),
                [("stage_table.csv (part)", _pick(later, ["stage", "mean_increase", "stage_mean_val_loss",
                                                          "increase_delta"]))]),
        Section("Fig. 13: outlier level",
                "(val_loss - parent val_loss) / parent val_loss of the increasing nodes, sorted. fraction_of_all "
                "divides by all measured nodes (as the paper's 13.2 % and 7.2 %), fraction_of_compared by the "
                "nodes that have a parent.",
                rep.png("fig13_outlier_level.png", F.fig_outlier(cdfs, counts, labels)),
                [("outlier_counts.csv", counts),
                 ("largest outlier levels", lv.dropna(subset=["outlier_level"])
                  .sort_values("outlier_level", ascending=False).head(10))]),
        Section("Fig. 14: busy workers", "Workers busy training a node over time (groups x group_size).",
                rep.png("fig14_busy_workers.png", F.fig_busy(busy, labels))),
    ]
    rep.summary.update(stage_table=st, table2=t2, outlier_counts=counts)


def ranking_sections(inp: ReportInputs, rep: Report) -> None:
    """The cell ranking (one CSV per run when there are several) and its figure."""
    runs, main, truth, top = inp.runs, inp.ranking, inp.truth, inp.top
    if len(inp.same_data) > 1:
        ranking_text = (f"Scores averaged over the {len(inp.same_data)} runs on the same data "
                        f"({', '.join(r.label for r in inp.same_data)}); evidence columns from `{runs[0].label}`.")
    else:
        ranking_text = f"From run `{runs[0].label}`."
    if len(runs) > 1:
        for lab, rk in inp.rankings.items():
            rep.csv(f"cell_ranking_{slug(lab)}.csv", rk)
    rep.csv("cell_ranking.csv", main)
    shown = main.head(top).copy()
    if truth is not None:
        shown.insert(3, "planted (truth)", _planted(shown["cell"], truth))
    rep.sections.append(Section(
        "Cell ranking",
        f"Score `{inp.method}`: {R.METHODS[inp.method].__doc__.strip()} Higher = more suspicious. {ranking_text} "
        "Evidence: `node` is the deepest node that validated the cell (trained on the most other cells), "
        "`mse` its per-cell validation MSE, `mse_ratio` that MSE over the stage's median per-cell MSE, "
        "`outlier_level` that node's.",
        rep.png("fig_cell_ranking.png", F.fig_ranking(main, truth, top, inp.method)),
        [(f"top {top} of cell_ranking.csv", shown)]))
    rep.summary["ranking"] = main


def cross_study_part(inp: ReportInputs, rep: Report) -> None:
    """Cell lines measured by several studies whose instances rank very differently (``cross_study.py``)."""
    rep.sections += cross_study.sections(rep, inp.ranking)


def _planted(cells: pd.Series, truth: pd.DataFrame) -> pd.Series:
    """Each cell's planted kind ("" for a clean cell)."""
    return cells.map(dict(zip(truth["cell"], truth["kind"]))).fillna("")


def hbl_detection_parts(inp: ReportInputs, truth: pd.DataFrame):
    """Each run's detection rows, ROC curve and candidate-score comparison on ``truth``
    (the runs on the first run's data): the HBL part of the detection table."""
    det_parts, curves, cmp_parts = [], [], []
    for r in inp.same_data:
        score = inp.rankings[r.label].set_index("cell")["score"]
        det_parts.append(R.detection_metrics(score, truth).assign(method=f"HBL {r.label}",
                                                                  **_cost([A.compute_totals(r.nodes)])))
        curves.append((f"HBL {r.label}", score))
        cmp_parts.append(R.compare_methods(r.cell_val, r.nodes, truth).assign(strategy=r.label))
    return det_parts, curves, cmp_parts


def detection_tables(rep: Report, det_parts: list[pd.DataFrame], cmp_parts: list[pd.DataFrame],
                     truth: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """detection.csv and ranking_methods.csv (written into ``rep``) from the per-method
    parts, and the planted kinds in words: one table layout for cells and for drugs."""
    det = pd.concat(det_parts, ignore_index=True)
    det = det[["method", "kind", "positives", "negatives", "k", "auroc", "average_precision",
               "precision_at_k", "unscored", "epochs", "row_epochs", "seconds"]]
    cmp = pd.concat(cmp_parts, ignore_index=True)
    cmp = cmp[["strategy"] + [c for c in cmp.columns if c != "strategy"]]
    rep.csv("detection.csv", det)
    rep.csv("ranking_methods.csv", cmp)
    kinds = ", ".join(f"{k}: {v}" for k, v in truth["kind"].value_counts().sort_index().items())
    return det, cmp, kinds


def _cost(tot: list[dict]) -> dict:
    """The detection table's compute columns for HBL runs with these totals."""
    return {"epochs": sum(t["epochs"] for t in tot), "row_epochs": sum(t["row_epochs"] for t in tot),
            "seconds": sum(t["train_hours"] for t in tot) * 3600}


def baseline_scores(inp: ReportInputs, truth: pd.DataFrame) -> tuple[list[pd.DataFrame], list[tuple[str, pd.Series]]]:
    """The baselines (Isolation Forest, K-fold residuals...) scored against the truth:
    detection rows and ROC curves."""
    rows, curves = [], []
    for b in inp.baseline_results:
        d = R.detection_metrics(b.score, truth)
        rows.append(d.assign(method=b.name, epochs=b.epochs, row_epochs=b.row_epochs, seconds=b.seconds))
        curves.append((b.name, b.score))
    return rows, curves


def tree_view_part(inp: ReportInputs, rep: Report) -> None:
    """Adaptive runs: the expanded tree (``tree_view.py``: nodes per stage, the expansions)."""
    rep.sections += tree_sections(rep, inp.runs)


def detection_sections(inp: ReportInputs, rep: Report) -> None:
    """With a planted truth: how well the ranking (each run's, combined, and every candidate
    score) finds the planted cells, beside the baselines when asked for."""
    truth = inp.truth
    if truth is None:
        if inp.baselines and inp.reference is None:
            inp.log("[hbl_mpi] report: no planted truth in the data; baselines are not scored")
        return
    det_parts, curves, cmp_parts = hbl_detection_parts(inp, truth)
    if len(inp.same_data) > 1:
        d = R.detection_metrics(inp.ranking.set_index("cell")["score"], truth)
        det_parts.append(d.assign(method="HBL combined",
                                  **_cost([A.compute_totals(r.nodes) for r in inp.same_data])))
    if inp.baselines:
        rows, more = baseline_scores(inp, truth)
        det_parts += rows
        curves += more
    det, cmp, kinds = detection_tables(rep, det_parts, cmp_parts, truth)
    rep.sections.append(Section(
        "Detection of the planted cells",
        f"The data has {len(truth)} planted anomalous cells ({kinds}). Per kind: that kind's cells against "
        "all clean cells; k = the number of positives. Compute: epochs and row-epochs (epochs x training "
        "rows) spent training; seconds = training time summed over the models (HBL: every node's `train_s`, "
        "however many ran at once; K-fold: its K models one after another; cleanlab adds its scoring to the "
        "K-fold models it reuses; Isolation Forest: fitting).",
        rep.png("fig_detection_roc.png", F.fig_roc(curves, truth)),
        [("detection.csv", det),
         ("ranking_methods.csv (every candidate cell score, kind = all)", cmp[cmp["kind"] == "all"])]))
    rep.summary["detection"] = det
    rep.summary["methods"] = cmp


def summary_sections(inp: ReportInputs, rep: Report, top: int = 10) -> None:
    """The answer first (inserted at the top): the most suspicious cells and, with a truth,
    how well each method found the planted ones."""
    ranking, truth = inp.ranking, inp.truth
    cols = [c for c in ["rank", "cell", "score", "impact", "diagnosis", "confidence", "likely_identity",
                        "screen_agreement", "node", "mse_ratio", "stages"] if c in ranking.columns]
    head = ranking.head(top)[cols].copy()
    tables = [(f"the {len(head)} most suspicious cells (score `{inp.method}`; all cells in cell_ranking.csv)", head)]
    text = ("Cells ranked by how badly models that never trained on them predict their responses, "
            "relative to the other cells held out at the same stage.")
    if truth is not None:
        head.insert(2, "planted (truth)", _planted(head["cell"], truth))
        det = rep.summary.get("detection")
        if det is not None:
            d = det[det["kind"] == "all"][["method", "k", "auroc", "average_precision", "precision_at_k", "epochs",
                                          "row_epochs", "seconds"]]
            tables.append(("detection of the planted cells (kind = all; per kind below)", d))
            text += f" The data has {len(truth)} planted anomalous cells."
    text += (" " + enrichment_sentence(rep.summary.get("enrichment"))).rstrip()
    gi = rep.summary.get("group_impact")
    if gi is not None and len(gi.flagged(+1)):
        f = gi.flagged(+1)
        text += (f" Learning the `{gi.column}` group(s) {', '.join(f['value'])} raises the other groups' holdout "
                 f"error beyond 3 sd (z = {', '.join(f'{z:.1f}' for z in f['z'])}; section Group impact).")
    rep.sections.insert(0, Section("Summary", text, None, tables))


SECTION_BUILDERS: tuple[SectionBuilder, ...] = (
    run_sections, paper_sections, ranking_sections, enrichment_sections, group_impact_sections,
    impact_sections, diagnosis_sections,
    cross_study_part, tree_view_part, detection_sections, cell_page_sections, summary_sections)
"""The report's parts, in the order they are built (the summary last: it shows the others'
results, at the top). To add a part, write a builder ``(inp, rep) -> None`` and put it here."""


def build(paths: list[str], *, baselines: bool = False, data: str | None = None, kfold: int = 5,
          method: str = R.DEFAULT_METHOD, top: int = 30, log=print, reference: str | None = None,
          cells: int = 20, builders: tuple[SectionBuilder, ...] = SECTION_BUILDERS,
          enrich_k: tuple[int, ...] = (20, 50), runs: list | None = None) -> Report:
    """Read the runs and compute every table and figure (nothing is written here).

    ``reference``: a second screen (Uno file) to hold the ranking against; ``cells``: how
    many top cells get a diagnosis page (``report_cells``); ``runs``: the runs already read
    (``report/drugs.py`` passes a drugs run's unit view with its own builders)."""
    runs = load_runs(paths) if runs is None else runs
    if reference is not None and not os.path.isfile(reference):
        raise InputError(f"--reference {reference!r} does not exist")
    data_path, dataset = None, None
    if baselines or data is not None:  # checked before any work: bad input costs nothing
        data_path = data or _data_path(runs[0])
        if not os.path.isfile(data_path):
            raise InputError(f"data file {data_path!r} for the baselines does not exist")
        from hbl_mpi.run.context import load_dataset
        from hbl_mpi.store.provenance import check_same_data

        dataset = load_dataset(data_path)
        # the baselines are scored beside the first run's data group (ReportInputs.same_data)
        check_same_data(runs[0].data_checksum, str(runs[0].config.get("data") or ""), data_path, dataset.checksum,
                        who="report", results=runs[0].path, remedy="pass --data with the data file the run trained on")
    inp = ReportInputs(runs, method=method, top=top, baselines=baselines, data_path=data_path, kfold=kfold,
                       log=log, reference=reference, cells=cells, dataset=dataset, enrich_k=tuple(enrich_k))
    names = ", ".join(f"`{r.label}` ({r.path})" for r in runs)
    rep = Report("hbl_mpi report", f"Runs: {names}.")
    for builder in builders:
        builder(inp, rep)
    return rep


