"""The report's cell diagnosis: per-cell pages of the top flagged cells and the cross-screen section.

Mechanism around the pure rules of ``hbl_mpi/diagnosis.py``: read the run's ``cell_pred`` and
``cell_neighbours`` tables, diagnose every ranked cell, draw one page per top cell (measured
against predicted response, residual by drug, error by stage, nearest cells by expression,
the diagnosis in one sentence) and, with ``report --reference OTHER.h5``, hold the ranking
against a second screen. Two of report.py's ``SECTION_BUILDERS``: ``diagnosis_sections`` (the
overview and the cross-screen check) and ``cell_page_sections`` (the pages, after the
run-level parts); ``ReportInputs.diagnosis`` calls ``diagnose_run`` once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hbl_mpi.analysis import diagnosis as D
from hbl_mpi.analysis import group_diagnosis as G
from hbl_mpi.core.errors import InputError
from hbl_mpi.report.page import KIND_COLOURS, Section, make_figure, slug

DIAG_COLUMNS = ["diagnosis", "likely_identity", "confidence", "flagged", "score_z", "bias_t", "resid_pred_corr", "identity_gain",
                "neighbour_coherence", "bias", "bias_share", "response_pred_corr", "identity_fit", "best_fit_ratio",
                "best_fit_cell",
                "n_drugs", "diag_node"] + G.EVIDENCE
REF_COLUMNS = ["screen_agreement", "shared_drugs", "screen_offset", "model_this_corr", "model_ref_corr",
               "model_this_mse", "model_ref_mse"]


@dataclass
class Diagnosis:
    """What the report needs: the per-cell diagnosis table and the inputs behind it."""

    table: pd.DataFrame  # one row per cell: evidence, diagnosis, likely_identity, confidence
    grid: D.Grid
    cell_pred: pd.DataFrame
    neighbours: pd.DataFrame | None
    reference: pd.DataFrame | None = None  # cross_screen output
    reference_path: str = ""
    metadata: pd.DataFrame | None = None  # the cells' metadata (tissue, study...), when the data had it
    group_seconds: float = 0.0  # what the group rule (group_diagnosis.py) cost


def load_reference(path: str) -> pd.DataFrame:
    """A second screen's responses (Uno format): cell, drug, label."""
    from hbl_mpi.data.uno_h5 import read_uno_responses

    if not os.path.isfile(path):
        raise InputError(f"--reference {path!r} does not exist")
    return read_uno_responses(path)


def diagnose_run(run, ranking: pd.DataFrame, reference: pd.DataFrame | None = None,
                 rules: D.Rules = D.RULES, full: bool = False, metadata: pd.DataFrame | None = None,
                 group_threshold: float = G.GROUP_SHARE):
    """Diagnose every ranked cell of one run (``results.RunTables``); None when the run has
    no ``cell_pred`` table (results written before the diagnosis existed, or data with doses).
    ``metadata`` (default: the run's own) adds the group rule (``distinct_group``).
    ``full`` returns the ``Diagnosis`` (grid, inputs) instead of the table alone."""
    import time

    if metadata is None:
        metadata = getattr(run, "cell_metadata", None)
    cp = run.cell_pred
    if cp is None or not len(cp):
        return None
    nb = run.cell_neighbours
    grid = D.prediction_grid(cp, run.nodes)
    xs = None
    if reference is not None:
        this = cp[np.isfinite(cp["label"].to_numpy(dtype=float))]
        this = this[this["node"].astype(str).isin(set(grid.node))]
        xs = D.cross_screen(this[["cell", "drug", "label"]], reference, grid)
    table = D.diagnose(grid, ranking, nb, rules, xs)
    t0 = time.perf_counter()
    table = G.apply_group_rule(table, grid, metadata, group_threshold, bootstrap=rules.bootstrap)
    seconds = time.perf_counter() - t0
    if not full:
        return table
    return Diagnosis(table, grid, cp, nb, xs, metadata=metadata, group_seconds=seconds)


def with_diagnosis(ranking: pd.DataFrame, diag: pd.DataFrame | None) -> pd.DataFrame:
    """The ranking with the diagnosis columns (and the cross-screen ones when present) appended."""
    if diag is None:
        return ranking
    cols = ["cell"] + [c for c in DIAG_COLUMNS + REF_COLUMNS if c in diag.columns]
    return ranking.merge(diag[cols], on="cell", how="left")


# ---------------------------------------------------------------------------
# one sentence per diagnosis
# ---------------------------------------------------------------------------
def _confidence(row: pd.Series) -> str:
    conf = row.get("confidence", np.nan)
    return f" (confidence {conf:.0%} over resampled drugs)" if np.isfinite(conf) else ""


SENTENCES = {
    "swap": "Swap: its responses fit the held-out predictions made from {likely_identity}'s expression {gain:.1f}x "
            "better than those from its own, as well as a typical cell's ({identity_fit:.1f}x the median error), so "
            "it is probably a misidentified or swapped line whose responses belong to the expression profile of "
            "{likely_identity}{c}.",
    "label_noise": "Label noise: no cell line's expression predicts its responses (the best fit is "
                   "{best_fit_ratio:.0f}x the typical error) and they barely follow its own predictions "
                   "(r = {response_pred_corr:.2f}): its measurements look corrupted{c}.",
    "shift": "Shift: its residuals share one sign (mean {bias:+.3f}, t = {bias_t:.0f}), a constant explains "
             "{bias_share:.0%} of its squared error: the whole profile is offset, as an assay or normalisation "
             "error would do{c}.",
    "distinct": "Distinct biology: the model errs the same way on its expression neighbours (coherence "
                "{neighbour_coherence:.2f}), so this is a kind of cell line the model has not learned, not an error "
                "of this line{c}.",
    "distinct_group": "Distinct group: the other {others} cells with {group_column} = {group_value} err the same "
                      "way (their mean drug-centred residual profile explains {group_share:.0%} of its squared "
                      "residual; cosine {group_coherence:.2f}), so this is the group's biology or assay, not an "
                      "error of this line: model the group rather than drop the cell{c}.",
    "replicate_disagreement": "Replicate disagreement: the second screen's responses for this line disagree with "
                              "this screen's, and the held-out predictions side with the second screen: this "
                              "screen's measurements of the line are suspect{c}.",
}
"""One sentence per diagnosis kind, with the numbers it rests on: filled from the cell's
diagnosis row, ``c`` (the confidence), ``gain`` (a swap's fit gain) and ``others``."""


def _sentence_values(row: pd.Series) -> dict:
    """The row's fields and the derived numbers the sentences name."""
    kind = row.get("diagnosis", "")
    values = dict(row.items())
    values["c"] = _confidence(row)
    if kind == "swap":
        values["gain"] = float(np.exp(row["identity_gain"]))
    if kind == "distinct_group":
        values["others"] = int(row["group_size"]) - 1
    return values


def sentence(row: pd.Series) -> str:
    """The diagnosis of one cell in one sentence, with the number it rests on."""
    kind = row.get("diagnosis", "")
    if kind in SENTENCES:
        s = SENTENCES[kind].format_map(_sentence_values(row))
    elif row.get("flagged", False):
        s = "No diagnosis: its error is high but matches no error signature (it may be hard, not wrong)."
    else:
        s = "Not flagged: its held-out error is ordinary for this run."
    if np.isfinite(row.get("screen_agreement", np.nan)):
        s += (f" Against the reference screen: drug-centred agreement r = {row['screen_agreement']:.2f} over "
              f"{int(row['shared_drugs'])} shared drugs; the model's predictions correlate "
              f"{row['model_this_corr']:.2f} with this screen and {row['model_ref_corr']:.2f} with the reference.")
    return s


# ---------------------------------------------------------------------------
# per-cell pages
# ---------------------------------------------------------------------------
def fig_cell(cell: str, dg: Diagnosis, stages: pd.DataFrame, n_named: int = 10):
    """Measured vs predicted, residual by drug (the most discordant named), error by stage."""
    from matplotlib.figure import Figure

    gi = dg.grid.index()[cell]
    m = dg.grid.measured[gi]
    y, p = dg.grid.label[gi, m], dg.grid.pred[gi, m]
    drugs = dg.grid.drugs[m]
    # a plain layout (no constrained layout): one of these per top cell, so it must be cheap
    fig = Figure(figsize=(14.0, 3.6))
    axes = fig.subplots(1, 4, squeeze=False, width_ratios=[1, 1.1, 1.1, 0.8])
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.16, top=0.9, wspace=0.45)
    ax = axes[0, 0]
    ax.scatter(p, y, s=10, alpha=0.7, color="#1f77b4")
    lo, hi = float(np.nanmin(np.r_[y, p])), float(np.nanmax(np.r_[y, p]))
    ax.plot([lo, hi], [lo, hi], "k:", lw=0.8)
    ax.set_xlabel("predicted (held-out node)")
    ax.set_ylabel("measured")
    ax.set_title(f"{cell}: measured vs predicted", fontsize=9)
    ax.grid(alpha=0.3)
    ax = axes[0, 1]
    r = y - p
    order = np.argsort(r)
    ax.bar(np.arange(len(r)), r[order], color=np.where(r[order] > 0, "#d62728", "#1f77b4"), width=1.0)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks([])
    ax.set_xlabel(f"{len(r)} drugs, sorted by residual ({np.mean(r < 0):.0%} below 0)")
    ax.set_ylabel("residual = measured - predicted")
    ax.set_title("residual by drug", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax = axes[0, 2]
    worst = np.argsort(-np.abs(r))[:n_named][::-1]
    ax.barh(np.arange(len(worst)), r[worst], color=np.where(r[worst] > 0, "#d62728", "#1f77b4"))
    ax.set_yticks(np.arange(len(worst)), [str(d)[:22] for d in drugs[worst]], fontsize=7)
    ax.axvline(0, color="k", lw=0.6)
    ax.set_xlabel("residual")
    ax.set_title(f"the {len(worst)} drugs that disagree most", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax = axes[0, 3]
    st = stages[stages["cell"] == cell].sort_values("stage")
    ax.plot(st["stage"], st["log_ratio"], "o-", color="#d62728")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(st["stage"].tolist())
    ax.set_xlabel("stage")
    ax.set_ylabel("ln(MSE / stage median)")
    ax.set_title("error by stage", fontsize=9)
    ax.grid(alpha=0.3)
    return fig


def cell_sections(rep, dg: Diagnosis, ranking: pd.DataFrame, stages: pd.DataFrame, top: int = 20) -> list:
    """One report section per flagged cell, the ``top`` highest-ranked of them (each page
    costs a four-panel figure, ~0.5 s of CPU: unflagged cells get none)."""
    d = dg.table.set_index("cell")
    rank = ranking.set_index("cell")
    nb = dg.neighbours
    out = []
    flagged = [c for c in ranking.sort_values("rank")["cell"].astype(str)
               if c in d.index and bool(d.loc[c, "flagged"])]
    for cell in flagged[:top]:
        row = d.loc[cell].copy()
        row["cell"] = cell
        gi = dg.grid.index()[cell]
        m = dg.grid.measured[gi]
        r = dg.grid.label[gi, m] - dg.grid.pred[gi, m]
        drugs = dg.grid.drugs[m]
        worst = np.argsort(-np.abs(r))[:8]
        disagree = pd.DataFrame({"drug": drugs[worst], "measured": dg.grid.label[gi, m][worst],
                                 "predicted": dg.grid.pred[gi, m][worst], "residual": r[worst]})
        held = stages[stages["cell"] == cell].sort_values("stage")
        held = held[[c for c in ["stage", "node", "n_rows", "mse", "stage_median", "log_ratio", "outlier_level"]
                     if c in held.columns]]
        if "impact" in rank.columns:
            held = held.assign(impact=rank.loc[cell, "impact"])
        tables = [("the drugs that disagree most", disagree), ("the nodes that held it out (error by stage)", held)]
        if nb is not None:
            near = nb[nb["cell"].astype(str) == cell].sort_values("rank").head(8)
            near = pd.DataFrame({"neighbour": near["neighbour"].astype(str).to_numpy(),
                                 "expression r": near["similarity"].to_numpy()})
            near["rank"] = near["neighbour"].map(rank["rank"]).to_numpy()
            near["diagnosis"] = near["neighbour"].map(d["diagnosis"]).fillna("").to_numpy()
            tables.append(("nearest cell lines by expression (their rank and diagnosis)", near))
        ev_cols = ["score", "diagnosis", "confidence", "likely_identity", "bias_t", "resid_pred_corr",
                   "identity_gain", "neighbour_coherence", "bias_share", "identity_fit", "best_fit_ratio"]
        ev_cols += [c for c in REF_COLUMNS if c in d.columns]
        ev_cols += [c for c in G.EVIDENCE if c in d.columns]
        tables.insert(0, ("evidence", pd.DataFrame([{c: row.get(c, "") for c in ev_cols}])))
        tables += _metadata_tables(dg.metadata, ranking, cell)
        title = f"Cell {cell} (rank {int(rank.loc[cell, 'rank'])}): {row['diagnosis']}"
        fig = rep.png(f"cell_{slug(cell)}.png", fig_cell(cell, dg, stages), dpi=90)
        out.append(Section(title, sentence(row), fig, tables))
    return out


def _metadata_tables(meta: pd.DataFrame | None, ranking: pd.DataFrame, cell: str) -> list:
    """The cell's metadata and how each of its groups ranks (its page's last two tables)."""
    if meta is None:
        return []
    row = meta[meta["cell"].astype(str) == cell]
    if not len(row):
        return [("cell metadata", pd.DataFrame([{"cell": cell, "metadata": "none for this cell"}]))]
    groups = G.group_profile(meta, ranking, cell)
    out = [("cell metadata", row.reset_index(drop=True))]
    if len(groups):
        out.append(("how its groups behave: size, median rank of their cells, how many are in the top 50", groups))
    return out


# ---------------------------------------------------------------------------
# cross-screen agreement
# ---------------------------------------------------------------------------
def fig_agreement(table: pd.DataFrame, top: int):
    fig, axes = make_figure(w=7.0, h=4.2)
    ax = axes[0, 0]
    t = table.dropna(subset=["screen_agreement"])
    col = {"label_noise": KIND_COLOURS["label_noise"], "shift": KIND_COLOURS["shift"], "swap": KIND_COLOURS["swap"],
           "distinct": "#2ca02c", "distinct_group": "#bcbd22", "replicate_disagreement": "#8c564b"}
    ax.scatter(t["rank"], t["screen_agreement"], s=6, color="#9e9e9e", alpha=0.6, label="all cells")
    for kind, c in col.items():
        s = t[(t["diagnosis"] == kind) & (t["rank"] <= top)]
        if len(s):
            ax.scatter(s["rank"], s["screen_agreement"], s=18, color=c, label=f"top {top}: {kind}")
    ax.axhline(float(t["screen_agreement"].median()), color="k", ls=":", lw=0.8, label="median")
    ax.set_xscale("log")
    ax.set_xlabel("rank in this run (1 = most suspicious)")
    ax.set_ylabel("cross-screen agreement (Pearson r)")
    ax.set_title("Drug-centred agreement with the reference screen, by rank")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def cross_screen_section(rep, ranking: pd.DataFrame, dg: Diagnosis, scores: dict[str, pd.Series], top: int):
    """Agreement beside the ranking, and each method's rank correlation with disagreement."""
    xs = dg.reference
    t = ranking[["rank", "cell", "score"] + [c for c in ("diagnosis",) if c in ranking.columns]].merge(
        xs, on="cell", how="left")
    rep.csv("cross_screen.csv", t)
    corr = D.score_disagreement_correlation(scores, xs)
    rep.csv("cross_screen_methods.csv", corr)
    rep.summary["cross_screen"] = corr
    shown = t.head(top)
    text = (f"Reference screen `{dg.reference_path}`: {len(xs)} cells in both screens with >= 5 shared drugs; "
            f"median agreement of drug-centred responses r = {xs['screen_agreement'].median():.2f}. "
            "Disagreement = 1 - agreement. A cell the two screens disagree on is a data problem no planted truth "
            "stands in for; a method whose score correlates positively with disagreement finds such cells. "
            "model_this_corr / model_ref_corr: the held-out predictions (drug-centred) against each screen: bad data "
            "here shows as the model agreeing with the reference better than with this screen; distinct biology as "
            "the screens agreeing with each other and not with the model.")
    return Section("Cross-screen agreement", text, rep.png("fig_cross_screen.png", fig_agreement(t, top)),
                   [("Spearman correlation of each method's score with cross-screen disagreement", corr),
                    (f"top {top} cells with their agreement", shown)])


def diagnosis_sections(inp, rep) -> None:
    """The report's "Cell diagnosis" part (and, with ``--reference``, its cross-screen
    agreement): one of report.py's ``SECTION_BUILDERS``."""
    dg, out, cells = inp.diagnosis, inp.ranking, inp.cells
    if dg is None:
        rep.sections.append(Section("Cell diagnosis", "This run has no `cell_pred` table (results written before the "
                                    "diagnosis existed, or data with a dose column): no diagnosis."))
        return
    counts = dg.table[dg.table["flagged"]]["diagnosis"].value_counts()
    summary = ", ".join(f"{k}: {int(v)}" for k, v in counts.items()) or "none"
    overview = out.head(cells)[[c for c in ["rank", "cell", "score", "diagnosis", "confidence", "likely_identity",
                                            "screen_agreement"] if c in out.columns]]
    by_cell = dg.table.set_index("cell")
    overview = overview.assign(sentence=[sentence(by_cell.loc[c]) for c in overview["cell"]])
    rep.sections.append(Section(
        "Cell diagnosis",
        f"{int(dg.table['flagged'].sum())} cells flagged (ranking score robust z >= {D.RULES.flag_z:g}); their "
        f"diagnoses: {summary}. Rules and their derivation: docs/findings/diagnosis.md §9; `distinct_group` (the "
        f"cell's metadata group errs as it does: group_share >= {G.GROUP_SHARE:g}) in docs/findings/real-data.md. "
        "The diagnosis uses each cell's held-out predictions at its deepest stage (`diag_node`).", None,
        [(f"the top {len(overview)} cells", overview)]))
    if dg.reference_path:
        by = out.set_index("cell")
        sc = {"HBL resist": by["score"]}
        if "impact" in out.columns:
            sc["HBL impact"] = by["impact"]
        sc.update({b.name: b.score for b in inp.baseline_results})
        rep.sections.append(cross_screen_section(rep, out, dg, sc, cells))
    rep.summary["diagnosis"] = dg.table
    rep.summary["group_diagnosis_seconds"] = dg.group_seconds


def cell_page_sections(inp, rep) -> None:
    """One page per flagged top cell, after the run-level answers."""
    from hbl_mpi.analysis import ranking as R

    if inp.diagnosis is None:
        return
    run = inp.runs[0]
    stages = R.cell_stage_table(run.cell_val, run.nodes)
    rep.sections += cell_sections(rep, inp.diagnosis, inp.ranking, stages, inp.cells)
