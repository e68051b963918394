"""The report of a drugs-partition run (``partition = "drugs"``, issue 30 part 5).

A drugs run holds out drugs instead of cells, so its answer is a ranking of *drugs*: the
same scores of the same held-out errors (``analysis/units.py`` presents the per-drug tables
in the shape the ranking, impact and detection code reads), written as ``drug_ranking.csv``
with ``cell_ranking.csv``'s columns and ``drug`` in place of ``cell``. The paper's figures
and the run totals are the cell report's own builders; the ranking, detection and summary
parts below say "drug". Diagnosis, the cross-screen check, the cross-study part and the
per-cell pages read cell expression or cell predictions: the report says they are not
available rather than showing cell words over drug ids. ``build_report`` picks the cell or
the drug report from the runs' partition.
"""

from __future__ import annotations


from hbl_mpi.analysis import paper_stats as A
from hbl_mpi.analysis import ranking as R
from hbl_mpi.analysis.units import common_unit, to_unit, unit_view
from hbl_mpi.core.errors import InputError
from hbl_mpi.report.build import (_cost, _planted, build, detection_tables, hbl_detection_parts, paper_sections,
                                   run_sections)
from hbl_mpi.report.figures import fig_ranking, fig_roc
from hbl_mpi.report.inputs import ReportInputs, load_runs
from hbl_mpi.report.page import Report, Section, slug

UNIT = "drug"


def drug_ranking_sections(inp: ReportInputs, rep: Report) -> None:
    """``drug_ranking.csv`` (one per run when there are several) and its figure."""
    main, truth, top = inp.ranking, inp.truth, inp.top
    if len(inp.runs) > 1:
        for lab, rk in inp.rankings.items():
            rep.csv(f"drug_ranking_{slug(lab)}.csv", to_unit(rk, UNIT))
    rep.csv("drug_ranking.csv", to_unit(main, UNIT))
    shown = main.head(top).copy()
    if truth is not None:
        shown.insert(3, "planted (truth)", _planted(shown["cell"], truth))
    impact = ("" if inp.impact is None else " `impact` (with `impact_sd`, `impact_z`): the estimated change in the "
              "other drugs' holdout error from learning the drug's rows (> 0 harms), from sibling contrasts.")
    rep.sections.append(Section(
        "Drug ranking",
        f"The run held out drugs (`partition = \"drugs\"`): each node validates on every cell's rows of its "
        f"drugs, so each drug has one held-out error per stage. Score `{inp.method}`: "
        f"{R.METHODS[inp.method].__doc__.strip()} Higher = more suspicious. Evidence: `node` is the deepest "
        "node that validated the drug (trained on the most other drugs), `mse` its validation MSE on the drug's "
        f"rows, `mse_ratio` that MSE over the stage's median per-drug MSE.{impact}",
        rep.png("fig_drug_ranking.png", fig_ranking(main, truth, top, inp.method, unit=UNIT)),
        [(f"top {top} of drug_ranking.csv", to_unit(shown, UNIT))]))
    rep.summary["ranking"] = to_unit(main, UNIT)


def drug_diagnosis_section(inp: ReportInputs, rep: Report) -> None:
    """Say why there is no diagnosis (rather than leave the reader to wonder)."""
    rep.sections.append(Section(
        "Diagnosis",
        "Not available for a drugs-partition run. The diagnosis kinds (label noise, shift, swap, distinct) "
        "are read from each held-out cell's predictions on every drug and from the cells' expression "
        "neighbours; a held-out drug has neither counterpart in these results. The drug ranking above and "
        "its `mse_ratio` say how far a drug's responses are from what the other drugs teach. The "
        "metadata enrichment (`enrichment.csv`) is not made either: the metadata describes cells."))


def drug_detection_sections(inp: ReportInputs, rep: Report) -> None:
    """With planted drugs: how well the drug ranking (and every candidate score) finds them."""
    truth = inp.truth
    if truth is None:
        return
    det_parts, curves, cmp_parts = hbl_detection_parts(inp, truth)
    if len(inp.same_data) > 1:
        d = R.detection_metrics(inp.ranking.set_index("cell")["score"], truth)
        det_parts.append(d.assign(method="HBL combined", **_cost([A.compute_totals(r.nodes) for r in inp.same_data])))
    det, cmp, kinds = detection_tables(rep, det_parts, cmp_parts, truth)
    rep.sections.append(Section(
        "Detection of the planted drugs",
        f"The data has {len(truth)} planted anomalous drugs ({kinds}). Per kind: that kind's drugs against "
        "all clean drugs; k = the number of positives. Compute: epochs and row-epochs (epochs x training "
        "rows) spent training; seconds = every node's `train_s` summed.",
        rep.png("fig_detection_roc.png", fig_roc(curves, truth, unit=UNIT)),
        [("detection.csv", det),
         ("ranking_methods.csv (every candidate drug score, kind = all)", cmp[cmp["kind"] == "all"])]))
    rep.summary["detection"] = det
    rep.summary["methods"] = cmp


def drug_summary_sections(inp: ReportInputs, rep: Report, top: int = 10) -> None:
    """The answer first: the most suspicious drugs and, with a truth, how well they were found."""
    ranking, truth = inp.ranking, inp.truth
    cols = [c for c in ["rank", "cell", "score", "impact", "node", "mse_ratio", "stages"] if c in ranking.columns]
    head = ranking.head(top)[cols].copy()
    tables = []
    text = ("Drugs ranked by how badly models that never trained on them predict their responses, "
            "relative to the other drugs held out at the same stage.")
    if truth is not None:
        head.insert(2, "planted (truth)", _planted(head["cell"], truth))
    tables.append((f"the {len(head)} most suspicious drugs (score `{inp.method}`; all drugs in drug_ranking.csv)",
                   to_unit(head, UNIT)))
    det = rep.summary.get("detection")
    if truth is not None and det is not None:
        d = det[det["kind"] == "all"][["method", "k", "auroc", "average_precision", "precision_at_k", "epochs",
                                      "row_epochs", "seconds"]]
        tables.append(("detection of the planted drugs (kind = all; per kind below)", d))
        text += f" The data has {len(truth)} planted anomalous drugs."
    rep.sections.insert(0, Section("Summary", text, None, tables))


DRUG_SECTION_BUILDERS = (run_sections, paper_sections, drug_ranking_sections, drug_diagnosis_section,
                         drug_detection_sections, drug_summary_sections)
"""The drug report's parts, in build order (the summary last, shown first)."""


def build_report(paths: list[str], **options) -> Report:
    """The report of ``paths``: the cell report (``build.build``), or the drug report when
    the runs held out drugs. Runs of different partitions cannot be mixed (exit 2)."""
    runs = load_runs(paths)
    try:
        unit = common_unit(runs)
    except ValueError as e:
        raise InputError(f"report: {e}") from None
    if unit == "cell":
        return build(paths, runs=runs, **options)
    for option, what in (("reference", "--reference (a second screen of the same cells)"),
                         ("baselines", "--baselines (the baselines score cells)")):
        if options.get(option):
            raise InputError(f"report: {what} is not available for a drugs-partition run")
    return build(paths, runs=[unit_view(r) for r in runs], builders=DRUG_SECTION_BUILDERS, **options)
