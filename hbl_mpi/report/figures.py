"""The paper's figures (docs/design.md §7) and the detection figures: one function per figure,
each returning a ``matplotlib.figure.Figure`` (no pyplot state)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hbl_mpi.analysis import paper_stats as A
from hbl_mpi.report.page import (
    KIND_COLOURS,
    LOSS_UNIT,
    PALETTE,
    add_legend,
    make_figure,
)
from hbl_mpi.store.results import RunTables


def _bars_figure(table: pd.DataFrame, value: str, labels: list[str], ylabel: str, title: str,
                 fraction: bool = False):
    """One bar per stage and strategy (grouped by stage); ``fraction``: the axis spans 0-1."""
    fig, ax = make_figure()
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
        add_legend(ax, title="epoch strategy", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if fraction:
        ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return fig


def fig_early_stop(t: pd.DataFrame, labels):
    return _bars_figure(t, "fraction_stopped_early", labels, "fraction of nodes stopped early",
                        "Fig. 8: fraction of early stops by stage", fraction=True)


def fig_epochs(t: pd.DataFrame, labels):
    fig, ax = make_figure()
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
    add_legend(ax, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Fig. 9: epochs actually trained by stage (mean) vs budget")
    return fig


def fig_percentiles(t: pd.DataFrame, labels, levels=A.PAPER_PERCENTILES):
    n = len(labels)
    fig, axes = make_figure(w=max(5.0, 3.6 * n), h=4.2, ncols=n, sharey=True)
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
    fig, ax = make_figure()
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
    add_legend(ax, fontsize=7)
    ax.set_title('Fig. 13: "outlier level" of the nodes that increased val_loss, sorted')
    return fig


def fig_busy(busy: pd.DataFrame, labels):
    n = len(labels)
    fig, axes = make_figure(w=7.0, h=2.4 * n + 0.8, nrows=n, sharex=False)
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
    fig, axes = make_figure(w=max(5.0, 3.6 * n), h=4.2, ncols=n, sharey=True)
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
    fig, axes = make_figure(w=11.0, h=max(4.5, 0.18 * top + 1.2), ncols=2, width_ratios=[1.2, 1])
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
        add_legend(ax, fontsize=8)
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


def fig_roc(curves: list[tuple[str, pd.Series]], truth: pd.DataFrame, unit: str = "cell"):
    from sklearn.metrics import roc_curve

    fig, ax = make_figure(w=6.0, h=5.0)
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
    add_legend(ax, fontsize=8, loc="lower right")
    ax.set_title(f"Detection of the planted {unit}s: ROC")
    return fig
