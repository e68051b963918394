"""Build the report of one or several runs: the paper's figures, CSV tables, the cell
ranking, detection scores, ``report.md`` and ``report.html`` (DESIGN §7).

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

import html
import io
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np
import pandas as pd

from hbl_mpi.analysis import paper_stats as A
from hbl_mpi.report import cross_study
from hbl_mpi.analysis import ranking as R
from hbl_mpi.core.atomic import replace_bytes
from hbl_mpi.core.errors import InputError
from hbl_mpi.analysis.impact import ImpactResult, add_impact, run_impact
from hbl_mpi.report.cells import (Diagnosis, cell_page_sections, diagnose_run, diagnosis_sections, load_reference,
                           with_diagnosis)
from hbl_mpi.report.impact import impact_sections
from hbl_mpi.store.results import RunTables, read_results

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
KIND_COLOURS = {"label_noise": "#d62728", "shift": "#ff7f0e", "swap": "#9467bd", "misid": "#17becf", "": "#9e9e9e",
                "wrong_assay": "#d62728", "drug_noise": "#9467bd", "drug_shift": "#ff7f0e"}
LOSS_UNIT = "val_loss (MSE, label units²)"


@dataclass
class Section:
    """One part of the report: a heading, text, optional figure and tables."""

    title: str
    text: str = ""
    figure: str | None = None  # file name of the PNG
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)  # (caption, table)


@dataclass
class Report:
    """Everything the report writes: files (name -> bytes) and the sections of report.md/html."""

    title: str
    intro: str
    files: dict[str, bytes] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    def csv(self, name: str, df: pd.DataFrame) -> str:
        self.files[name] = df.to_csv(index=False).encode()
        return name

    def png(self, name: str, fig, dpi: int = 110) -> str:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        self.files[name] = buf.getvalue()
        return name


# ---------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------
def _figure(w=7.0, h=4.2, ncols=1, nrows=1, **kw):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _bars_figure(table: pd.DataFrame, value: str, labels: list[str], ylabel: str, title: str,
                 fraction: bool = False):
    """One bar per stage and strategy (grouped by stage); ``fraction``: the axis spans 0-1."""
    fig, ax = _figure()
    ax = ax[0, 0]
    stages = sorted(table["stage"].unique())
    width = 0.8 / max(1, len(labels))
    for i, lab in enumerate(labels):
        t = table[table["strategy"] == lab].set_index("stage").reindex(stages)
        x = np.arange(len(stages)) + (i - (len(labels) - 1) / 2) * width
        ax.bar(x, t[value].to_numpy(dtype=float), width, label=lab, color=PALETTE[i % len(PALETTE)])
    ax.set_xticks(np.arange(len(stages)), [str(s) for s in stages])
    ax.set_xlabel("stage")
    ax.grid(axis="y", alpha=0.3)
    if len(labels) > 1:  # outside the axes: bars may reach any height
        _legend(ax, title="epoch strategy", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if fraction:
        ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return fig


def fig_early_stop(t: pd.DataFrame, labels):
    return _bars_figure(t, "fraction_stopped_early", labels, "fraction of nodes stopped early",
                        "Fig. 8: fraction of early stops by stage", fraction=True)


def fig_epochs(t: pd.DataFrame, labels):
    fig, ax = _figure()
    ax = ax[0, 0]
    for i, lab in enumerate(labels):
        s = t[t["strategy"] == lab]
        c = PALETTE[i % len(PALETTE)]
        ax.plot(s["stage"], s["mean_epochs_run"], "o-", color=c, label=f"{lab}: mean run")
        ax.plot(s["stage"], s["epochs_planned"], "--", color=c, alpha=0.6, label=f"{lab}: budget")
    ax.set_xlabel("stage")
    ax.set_ylabel("epochs per node")
    ax.set_xticks(sorted(t["stage"].unique()))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    # outside the axes: with several strategies the legend covered the stage-2..3 lines
    _legend(ax, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Fig. 9: epochs actually trained by stage (mean) vs budget")
    return fig


def fig_percentiles(t: pd.DataFrame, labels, levels=A.PAPER_PERCENTILES):
    n = len(labels)
    fig, axes = _figure(w=max(5.0, 3.6 * n), h=4.2, ncols=n, sharey=True)
    for i, lab in enumerate(labels):
        ax = axes[0, i]
        s = t[t["strategy"] == lab]
        for j, p in enumerate(levels):
            ax.plot(s["stage"], s[f"p{p}"], "o-", color=PALETTE[j], label=f"{p} %")
        ax.set_title(lab)
        ax.set_xlabel("stage")
        ax.set_xticks(sorted(s["stage"].unique()))
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_ylabel(LOSS_UNIT)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, title="percentile\n(99 % = best)", fontsize=8, loc="outside right upper")
    fig.suptitle("Fig. 10: validation loss percentiles by stage and epoch strategy")
    return fig


def fig_increase(t: pd.DataFrame, labels):
    return _bars_figure(t, "fraction_increased", labels, "fraction of nodes with val_loss > parent's",
                        "Fig. 11: fraction of nodes whose val_loss increased over the parent", fraction=True)


def fig_delta(t: pd.DataFrame, labels):
    return _bars_figure(t, "increase_delta", labels, "mean increase / stage mean val_loss (ratio)",
                        'Fig. 12: "increase delta" of val_loss by stage')


def fig_outlier(cdfs: pd.DataFrame, counts: pd.DataFrame, labels):
    fig, ax = _figure()
    ax = ax[0, 0]
    for i, lab in enumerate(labels):
        s = cdfs[cdfs["strategy"] == lab]
        c = counts[(counts["strategy"] == lab)].set_index("threshold")
        above = ", ".join(f">{t:g}: {int(c.loc[t, 'nodes_above'])}" for t in c.index)
        ax.plot(s["cum_fraction"], s["outlier_level"], ".-", color=PALETTE[i % len(PALETTE)],
                label=f"{lab} ({len(s)} increasing nodes; {above})")
    for y in (1, 2):
        ax.axhline(y, color="k", lw=0.8, ls=":")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_ylim(bottom=0)  # only increasing nodes are plotted: levels are > 0
    ax.set_xlabel("cumulative fraction of the nodes that increased val_loss")
    ax.set_ylabel("outlier level = Δval_loss / parent val_loss (ratio)")
    ax.grid(alpha=0.3)
    _legend(ax, fontsize=7)
    ax.set_title('Fig. 13: "outlier level" of the nodes that increased val_loss, sorted')
    return fig


def fig_busy(busy: pd.DataFrame, labels):
    n = len(labels)
    fig, axes = _figure(w=7.0, h=2.4 * n + 0.8, nrows=n, sharex=False)
    for i, lab in enumerate(labels):
        ax = axes[i, 0]
        s = busy[busy["strategy"] == lab]
        if len(s):
            ax.step(s["time"], s["busy_workers"], where="post", color=PALETTE[i % len(PALETTE)])
            ax.fill_between(s["time"], s["busy_workers"], step="post", alpha=0.3, color=PALETTE[i % len(PALETTE)])
        ax.set_ylabel("busy workers")
        from matplotlib.ticker import MaxNLocator

        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(lab, fontsize=9)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("time since run start (s)")
    fig.suptitle("Fig. 14: compute load over time (workers training a node)")
    return fig


def fig_trajectories(runs: list[RunTables]):
    n = len(runs)
    fig, axes = _figure(w=max(5.0, 3.6 * n), h=4.2, ncols=n, sharey=True)
    for i, r in enumerate(runs):
        ax = axes[0, i]
        m = A.with_parent(r.nodes)
        val = dict(zip(m["node"], m["val_loss"]))
        leaves = [n for n in m["node"] if not any(k.startswith(n + ".") for k in val)]
        for leaf in leaves:
            path = [p for p in A.trajectory(leaf) if p in val]
            ax.plot([p.count(".") for p in path], [val[p] for p in path], "-", color="#1f77b4",
                    alpha=0.25, lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("stage")
        ax.set_title(r.label)
        ax.set_xticks(sorted(m["stage"].unique()))
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_ylabel(LOSS_UNIT)
    fig.suptitle("Fig. 7: val_loss along every trajectory (stage 1 to leaf)")
    return fig


def fig_ranking(ranking: pd.DataFrame, truth: pd.DataFrame | None, top: int = 30, method: str = "",
                unit: str = "cell"):
    fig, axes = _figure(w=11.0, h=max(4.5, 0.18 * top + 1.2), ncols=2, width_ratios=[1.2, 1])
    kinds = dict(zip(truth["cell"], truth["kind"])) if truth is not None else {}
    t = ranking.head(top).iloc[::-1]
    colours = [KIND_COLOURS.get(kinds.get(c, ""), "#9e9e9e") for c in t["cell"]]
    ax = axes[0, 0]
    ax.barh(np.arange(len(t)), t["score"], color=colours)
    ax.set_yticks(np.arange(len(t)), t["cell"], fontsize=7)
    ax.set_xlabel(f"score `{method}` (higher = more suspicious)")
    ax.set_title(f"top {len(t)} {unit}s")
    ax.grid(axis="x", alpha=0.3)
    ax = axes[0, 1]
    s = ranking["score"].replace(-np.inf, np.nan).dropna()
    bins = np.linspace(s.min(), s.max(), 40) if len(s) > 1 and s.max() > s.min() else 10
    if kinds:
        clean = s[~ranking.loc[s.index, "cell"].isin(set(kinds))]
        ax.hist(clean, bins=bins, color=KIND_COLOURS[""], label="not planted", alpha=0.8)
        for k in sorted(set(kinds.values())):
            sel = s[ranking.loc[s.index, "cell"].map(kinds) == k]
            ax.hist(sel, bins=bins, color=KIND_COLOURS.get(k, "k"), alpha=0.8, label=f"planted {k}")
        _legend(ax, fontsize=8)
        from matplotlib.patches import Patch

        axes[0, 0].legend(handles=[Patch(color=KIND_COLOURS.get(k, "k"), label=k or "not planted")
                                   for k in sorted(set(kinds.values())) + [""]], fontsize=7, loc="lower right")
    else:
        ax.hist(s, bins=bins, color="#1f77b4")
    ax.set_xlabel(f"score `{method}`")
    ax.set_ylabel(f"{unit}s")
    ax.set_title(f"score distribution, all {unit}s")
    fig.suptitle(f"{unit.capitalize()} ranking: {unit}s whose held-out error stays high at every stage")
    return fig


def _legend(ax, **kw) -> None:
    """A legend when the axes have labelled artists; none (and no matplotlib warning on
    stderr) when partial results left nothing to label."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def fig_roc(curves: list[tuple[str, pd.Series]], truth: pd.DataFrame, unit: str = "cell"):
    from sklearn.metrics import roc_curve

    fig, ax = _figure(w=6.0, h=5.0)
    ax = ax[0, 0]
    planted = set(truth["cell"].astype(str))
    for i, (name, score) in enumerate(curves):
        s = score.replace(-np.inf, np.nan)
        s = s.fillna(s.min() - 1 if s.notna().any() else 0.0)
        y = np.array([c in planted for c in s.index.astype(str)], dtype=int)
        if 0 < y.sum() < len(y):
            fpr, tpr, _ = roc_curve(y, s.to_numpy(dtype=float))
            ax.plot(fpr, tpr, color=PALETTE[i % len(PALETTE)], label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel(f"false positive rate (clean {unit}s flagged)")
    ax.set_ylabel(f"true positive rate (planted {unit}s found)")
    _legend(ax, fontsize=8, loc="lower right")
    ax.set_title(f"Detection of the planted {unit}s: ROC")
    return fig


# ---------------------------------------------------------------------------
# building: one builder per part of the report
# ---------------------------------------------------------------------------
@dataclass
class ReportInputs:
    """What every section builder reads: the runs and the report's options.

    The cell ranking is computed once, on first use, and shared: the ranking, detection,
    summary (and any later) sections all show the same one.
    """

    runs: list[RunTables]
    method: str = R.DEFAULT_METHOD
    top: int = 30
    baselines: bool = False
    data_path: str | None = None  # the baselines' data file (checked before any work)
    kfold: int = 5
    log: Callable[..., object] = print
    reference: str | None = None  # a second screen (Uno file) to hold the ranking against
    cells: int = 20  # top cells given a diagnosis page

    @property
    def labels(self) -> list[str]:
        return [r.label for r in self.runs]

    @cached_property
    def same_data(self) -> list[RunTables]:
        """The runs made on the first run's data (by checksum): their rankings may be averaged."""
        return [r for r in self.runs if r.data_checksum == self.runs[0].data_checksum]

    @cached_property
    def truth(self) -> pd.DataFrame | None:
        """The planted anomalies of that data, when it has them."""
        return next((r.truth for r in self.same_data if r.truth is not None), None)

    @cached_property
    def rankings(self) -> dict[str, pd.DataFrame]:
        """Each run's cell ranking, by run label."""
        return {r.label: R.rank_cells(r.cell_val, r.nodes, method=self.method, plan=r.plan) for r in self.runs}

    @cached_property
    def impact(self) -> ImpactResult | None:
        """The first run's impact estimate (None: its results predate ``cell_test``)."""
        return run_impact(self.runs[0])

    @cached_property
    def scored(self) -> pd.DataFrame:
        """The first run's ranking, or the scores averaged over the runs on its data
        (evidence columns from the first run); with ``impact``, ``impact_sd`` and
        ``combined`` when the run has an impact estimate."""
        main = self.rankings[self.runs[0].label]
        if len(self.same_data) > 1:
            comb = R.combine_rankings([self.rankings[r.label] for r in self.same_data])
            main = comb.merge(main.drop(columns=["score", "rank"]), on="cell", how="left")
        return main if self.impact is None else add_impact(main, self.impact)

    @cached_property
    def diagnosis(self) -> Diagnosis | None:
        """What is wrong with each ranked cell (None: the run has no ``cell_pred`` table)."""
        ref = load_reference(self.reference) if self.reference else None
        dg = diagnose_run(self.runs[0], self.scored, ref, full=True)
        if dg is not None:
            dg.reference_path = self.reference or ""
        return dg

    @cached_property
    def ranking(self) -> pd.DataFrame:
        """The report's ranking: ``scored`` with the diagnosis columns when there is one."""
        return self.scored if self.diagnosis is None else with_diagnosis(self.scored, self.diagnosis.table)

    @cached_property
    def baseline_results(self) -> list:
        """The baselines (``baselines.run_baselines``), run once when asked for: the detection
        and the cross-screen sections both score them."""
        if not self.baselines:
            return []
        from hbl_mpi.analysis.baselines import run_baselines

        return run_baselines(self.data_path, self.runs[0].config, kfold=self.kfold, log=self.log)


SectionBuilder = Callable[[ReportInputs, Report], None]
"""A part of the report: reads the inputs, adds files and sections to the report (and may
leave results in ``rep.summary`` for the command's output)."""


def run_sections(inp: ReportInputs, rep: Report) -> None:
    """Run totals and, for a partial run, the failed nodes and what they left untrained."""
    runs = inp.runs
    totals = pd.DataFrame([{"strategy": r.label, **A.compute_totals(r.nodes),
                            **A.utilisation(r.nodes, r.group_size)} for r in runs])
    rep.csv("run_totals.csv", totals)
    rep.sections.append(Section(
        "Run totals", "Nodes, epochs, training row-epochs (epochs x training rows) and time per run; "
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
                rep.png("fig07_trajectories.png", fig_trajectories(runs))),
        Section("Fig. 8: early stopping", "Fraction of each stage's nodes that stopped early (patience on val_loss).",
                rep.png("fig08_early_stop.png", fig_early_stop(st, labels)),
                [("stage_table.csv (part)", _pick(st, ["stage", "nodes", "stopped_early", "fraction_stopped_early"]))]),
        Section("Fig. 9: epochs trained", "Mean epochs actually run per node by stage, beside the strategy's budget.",
                rep.png("fig09_epochs.png", fig_epochs(st, labels)),
                [("stage_table.csv (part)", _pick(st, ["stage", "mean_epochs_run", "median_epochs_run",
                                                       "epochs_planned"]))]),
        Section("Fig. 10: val_loss percentiles",
                "The paper's percentiles: p % is the val_loss below which (100 - p) % of the stage's nodes lie, "
                "so 99 % is near the best node and 10 % near the worst.",
                rep.png("fig10_val_loss_percentiles.png", fig_percentiles(st, labels)),
                [("stage_table.csv (part)", _pick(st, ["stage"] + [f"p{p}" for p in A.PAPER_PERCENTILES]))]),
        Section("Table 2: the best final-stage trajectory",
                "The final-stage node with the lowest val_loss; hours and steps summed over it and its ancestors.",
                None, [("table2_best_trajectory.csv", t2)]),
        Section("Fig. 11: val_loss increases",
                "Fraction of each stage's nodes whose val_loss is above their parent's (stage 1 has no parent).",
                rep.png("fig11_increase_fraction.png", fig_increase(later, labels)),
                [("stage_table.csv (part)", _pick(later, ["stage", "nodes_with_parent", "increased",
                                                          "fraction_increased"]))]),
        Section("Fig. 12: increase delta",
                "Mean increase of the increasing nodes divided by the stage's mean val_loss.",
                rep.png("fig12_increase_delta.png", fig_delta(later, labels)),
                [("stage_table.csv (part)", _pick(later, ["stage", "mean_increase", "stage_mean_val_loss",
                                                          "increase_delta"]))]),
        Section("Fig. 13: outlier level",
                "(val_loss - parent val_loss) / parent val_loss of the increasing nodes, sorted. fraction_of_all "
                "divides by all measured nodes (as the paper's 13.2 % and 7.2 %), fraction_of_compared by the "
                "nodes that have a parent.",
                rep.png("fig13_outlier_level.png", fig_outlier(cdfs, counts, labels)),
                [("outlier_counts.csv", counts),
                 ("largest outlier levels", lv.dropna(subset=["outlier_level"])
                  .sort_values("outlier_level", ascending=False).head(10))]),
        Section("Fig. 14: busy workers", "Workers busy training a node over time (groups x group_size).",
                rep.png("fig14_busy_workers.png", fig_busy(busy, labels))),
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
            rep.csv(f"cell_ranking_{_slug(lab)}.csv", rk)
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
        rep.png("fig_cell_ranking.png", fig_ranking(main, truth, top, inp.method)),
        [(f"top {top} of cell_ranking.csv", shown)]))
    rep.summary["ranking"] = main


def cross_study_part(inp: ReportInputs, rep: Report) -> None:
    """Cell lines measured by several studies whose instances rank very differently (``cross_study.py``)."""
    rep.sections += cross_study.sections(rep, inp.ranking)


def _planted(cells: pd.Series, truth: pd.DataFrame) -> pd.Series:
    """Each cell's planted kind ("" for a clean cell)."""
    return cells.map(dict(zip(truth["cell"], truth["kind"]))).fillna("")


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
    from hbl_mpi.report.tree_view import sections as tree_sections

    rep.sections += tree_sections(rep, inp.runs, Section)


def detection_sections(inp: ReportInputs, rep: Report) -> None:
    """With a planted truth: how well the ranking (each run's, combined, and every candidate
    score) finds the planted cells, beside the baselines when asked for."""
    truth = inp.truth
    if truth is None:
        if inp.baselines and inp.reference is None:
            inp.log("[hbl_mpi] report: no planted truth in the data; baselines are not scored")
        return
    det_parts, curves, cmp_parts = [], [], []
    for r in inp.same_data:
        score = inp.rankings[r.label].set_index("cell")["score"]
        det_parts.append(R.detection_metrics(score, truth).assign(method=f"HBL {r.label}",
                                                                  **_cost([A.compute_totals(r.nodes)])))
        curves.append((f"HBL {r.label}", score))
        cmp_parts.append(R.compare_methods(r.cell_val, r.nodes, truth).assign(strategy=r.label))
    if len(inp.same_data) > 1:
        d = R.detection_metrics(inp.ranking.set_index("cell")["score"], truth)
        det_parts.append(d.assign(method="HBL combined",
                                  **_cost([A.compute_totals(r.nodes) for r in inp.same_data])))
    if inp.baselines:
        rows, more = baseline_scores(inp, truth)
        det_parts += rows
        curves += more
    det = pd.concat(det_parts, ignore_index=True)
    det = det[["method", "kind", "positives", "negatives", "k", "auroc", "average_precision",
               "precision_at_k", "unscored", "epochs", "row_epochs", "seconds"]]
    cmp = pd.concat(cmp_parts, ignore_index=True)
    cmp = cmp[["strategy"] + [c for c in cmp.columns if c != "strategy"]]
    rep.csv("detection.csv", det)
    rep.csv("ranking_methods.csv", cmp)
    kinds = ", ".join(f"{k}: {v}" for k, v in truth["kind"].value_counts().sort_index().items())
    rep.sections.append(Section(
        "Detection of the planted cells",
        f"The data has {len(truth)} planted anomalous cells ({kinds}). Per kind: that kind's cells against "
        "all clean cells; k = the number of positives. Compute: epochs and row-epochs (epochs x training "
        "rows) spent training; seconds = training time summed over the models (HBL: every node's `train_s`, "
        "however many ran at once; K-fold: its K models one after another; cleanlab adds its scoring to the "
        "K-fold models it reuses; Isolation Forest: fitting).",
        rep.png("fig_detection_roc.png", fig_roc(curves, truth)),
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
    rep.sections.insert(0, Section("Summary", text, None, tables))


SECTION_BUILDERS: tuple[SectionBuilder, ...] = (
    run_sections, paper_sections, ranking_sections, impact_sections, diagnosis_sections, cross_study_part,
    tree_view_part, detection_sections, cell_page_sections, summary_sections)
"""The report's parts, in the order they are built (the summary last: it shows the others'
results, at the top). To add a part, write a builder ``(inp, rep) -> None`` and put it here."""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "run"


def load_runs(paths: list[str]) -> list[RunTables]:
    if not paths:
        raise InputError("report needs at least one results file")
    return A.unique_labels([read_results(p) for p in paths])


def build(paths: list[str], *, baselines: bool = False, data: str | None = None, kfold: int = 5,
          method: str = R.DEFAULT_METHOD, top: int = 30, log=print, reference: str | None = None,
          cells: int = 20, builders: tuple[SectionBuilder, ...] = SECTION_BUILDERS,
          runs: list[RunTables] | None = None) -> Report:
    """Read the runs and compute every table and figure (nothing is written here).

    ``reference``: a second screen (Uno file) to hold the ranking against; ``cells``: how
    many top cells get a diagnosis page (``report_cells``); ``runs``: the runs already read
    (``report/drugs.py`` passes a drugs run's unit view with its own builders)."""
    runs = load_runs(paths) if runs is None else runs
    if reference is not None and not os.path.isfile(reference):
        raise InputError(f"--reference {reference!r} does not exist")
    data_path = None
    if baselines:  # checked before any work: bad input costs nothing
        data_path = data or _data_path(runs[0])
        if not os.path.isfile(data_path):
            raise InputError(f"data file {data_path!r} for the baselines does not exist")
    inp = ReportInputs(runs, method=method, top=top, baselines=baselines, data_path=data_path, kfold=kfold,
                       log=log, reference=reference, cells=cells)
    names = ", ".join(f"`{r.label}` ({r.path})" for r in runs)
    rep = Report("hbl_mpi report", f"Runs: {names}.")
    for builder in builders:
        builder(inp, rep)
    return rep


def _data_path(run: RunTables) -> str:
    p = str(run.config.get("data") or "")
    if not p:
        raise InputError(f"{run.path!r} records no data path; pass --data for the baselines")
    if not os.path.isabs(p) and not os.path.exists(p):
        alt = os.path.join(os.path.dirname(os.path.abspath(run.path)), p)
        p = alt if os.path.exists(alt) else p
    if not os.path.exists(p):
        raise InputError(f"data file {p!r} of {run.path!r} does not exist; pass --data for the baselines")
    return p


# ---------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------
def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "" if np.isnan(v) else str(v)
        a = abs(v)
        if a != 0 and (a < 1e-3 or a >= 1e6):
            return f"{v:.3g}"
        return f"{v:.4g}"
    return str(v)


def markdown_table(df: pd.DataFrame) -> str:
    cols = [_md_cell(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_md_cell(_fmt(v)) for v in row) + " |")
    return "\n".join(lines)


def _md_cell(value) -> str:
    """One table cell on one line: ids are data (DESIGN §1 puts no limit on them), so a
    ``|`` is escaped and a line break (or any control character) is shown as its escape,
    ``\\n``, rather than ending the row."""
    text = str(value).replace("\\", "\\\\").replace("|", "\\|")
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)


def _td(v) -> str:
    text = html.escape(_fmt(v))
    numeric = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
    return f"<td>{text}</td>" if numeric else f"<td class='t'>{text}</td>"


def html_table(df: pd.DataFrame) -> str:
    """A scrollable HTML table: numbers right-aligned, text left-aligned."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(_td(v) for v in row) + "</tr>" for row in df.itertuples(index=False))
    return f"<div class='tw'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _inline(text: str) -> str:
    """Escape text for HTML; `code` spans (as in the markdown) become <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def render_markdown(rep: Report) -> str:
    out = [f"# {rep.title}", "", rep.intro, ""]
    for s in rep.sections:
        out += [f"## {s.title}", ""]
        if s.text:
            out += [s.text, ""]
        if s.figure:
            out += [f"![{s.title}]({s.figure})", ""]
        for cap, t in s.tables:
            out += [f"*{cap}*", "", markdown_table(t), ""]
    return "\n".join(out)


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#222}
.tw{overflow-x:auto;margin:.3em 0 1.2em}table{border-collapse:collapse;font-size:12px}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right;white-space:nowrap}td.t{text-align:left}
th{background:#f2f2f2;position:sticky;top:0}img{max-width:100%;border:1px solid #eee}
h2{border-bottom:1px solid #ddd;margin-top:1.6em}.cap{font-style:italic;font-size:12px;color:#555}
code{background:#f4f4f4;padding:0 3px;border-radius:3px;font-size:90%}"""


def render_html(rep: Report) -> str:
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(rep.title)}</title>",
           f"<style>{CSS}</style></head><body><h1>{html.escape(rep.title)}</h1><p>{_inline(rep.intro)}</p>"]
    out.append("<ul>" + "".join(f"<li><a href='#s{i}'>{html.escape(s.title)}</a></li>"
                                for i, s in enumerate(rep.sections)) + "</ul>")
    for i, s in enumerate(rep.sections):
        out.append(f"<h2 id='s{i}'>{html.escape(s.title)}</h2>")
        if s.text:
            out.append(f"<p>{_inline(s.text)}</p>")
        if s.figure:
            out.append(f"<img src='{html.escape(s.figure)}' alt='{html.escape(s.title)}'>")
        for cap, t in s.tables:
            out.append(f"<div class='cap'>{_inline(cap)}</div>{html_table(t)}")
    out.append("</body></html>")
    return "\n".join(out)


def write(rep: Report, out_dir: str) -> list[str]:
    """Write every file of the report into ``out_dir`` (each atomically); returns the paths."""
    rep.files["report.md"] = render_markdown(rep).encode()
    rep.files["report.html"] = render_html(rep).encode()
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create output directory {out_dir!r}: {e.strerror}") from None
    written = []
    for name, data in rep.files.items():
        path = os.path.join(out_dir, name)
        replace_bytes(path, data)  # WriteFailed (the old file kept): commands/report.py says so
        written.append(path)
    return written
