"""Cross-study disagreement: one cell line ranking very differently by study.

A multi-study data set (Top21; ``data gdsc --source gdsc1,gdsc2,ccle``; ``data improve``
with several sources) holds each study's instance of a cell line as its own cell,
source-prefixed: ``CCLE.A673``, ``GDSC2.A673``. The instances share the expression
profile and differ in the responses each study measured. If the tree finds one instance
hard to learn and the others ordinary, the problem is in that study's measurements of the
line (a mislabelled vial, a failed plate, a different subclone), not in the line: the
strongest evidence of a study-specific problem the ranking can give.

Why percentiles *within each study*: studies differ in label scale and noise (CCLE's
activity area rescaled vs GDSC's AUC), so one study's instances can rank high or low as a
block. Ranking each instance among its own study's instances removes that study-level
shift; the study-level effect is reported on its own (``study_table``).

The rule (derivation and chance rates in docs/findings/cross-study.md §7):
an instance's within-study percentile is ``q = (rank - 0.5) / n`` (0 = most suspicious);
a line measured by ``k >= 2`` studies is **flagged** when its most suspicious instance has
``q <= top`` and its least suspicious one ``q >= ordinary`` (defaults 0.1 and 0.5). If
the instances' ranks were independent uniform draws, a line would be flagged with
probability ``1 - (1 - top)^k - ordinary^k + (ordinary - top)^k`` (0.10 for k = 2 with
the defaults): ``chance_flags`` sums that over the lines, the count to compare with.
Agreement between studies is the Spearman correlation of their instances' scores over
the lines they share (0 when instances are unrelated, 1 when a line ranks the same
everywhere). Pure pandas: no MPI, no files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from hbl_mpi.report.page import Section

SEP = "."
TOP = 0.1
ORDINARY = 0.5


def split_ids(cells) -> pd.DataFrame | None:
    """cell -> (study, line) when every id is ``STUDY.line``; None when the ids are not source-prefixed."""
    cells = pd.Series(list(cells), dtype=object).astype(str)
    if cells.empty or not cells.str.contains(SEP, regex=False).all():
        return None
    parts = cells.str.split(SEP, n=1, expand=True)
    return pd.DataFrame({"cell": cells, "study": parts[0], "line": parts[1]})


def chance_flag_probability(k: int, top: float = TOP, ordinary: float = ORDINARY) -> float:
    """P(min q <= top and max q >= ordinary) for k independent uniform percentiles (top < ordinary)."""
    return float(1 - (1 - top) ** k - ordinary ** k + (ordinary - top) ** k)


def instances(ranking: pd.DataFrame) -> pd.DataFrame | None:
    """The ranking's instances with study, line and within-study percentile q; None if not multi-study.

    Multi-study means: every id is source-prefixed, there are at least two studies and at
    least one line is measured by two of them.
    """
    ids = split_ids(ranking["cell"])
    if ids is None or ids["study"].nunique() < 2:
        return None
    t = ranking[["cell", "score", "rank"]].copy()
    t["cell"] = t["cell"].astype(str)
    t = t.merge(ids, on="cell", how="left")
    if not (t.groupby("line")["study"].nunique() >= 2).any():
        return None
    t = t.sort_values("rank", kind="mergesort")
    t["study_rank"] = t.groupby("study").cumcount() + 1
    t["study_n"] = t.groupby("study")["cell"].transform("size")
    t["q"] = (t["study_rank"] - 0.5) / t["study_n"]
    return t.reset_index(drop=True)


def disagreement_table(ranking: pd.DataFrame, top: float = TOP, ordinary: float = ORDINARY) -> pd.DataFrame | None:
    """One row per line measured by two or more studies, flagged lines first, then by spread.

    Columns: line, studies (k), worst_study, worst_rank (overall rank of its most
    suspicious instance), worst_q, best_study, best_q, spread (best_q - worst_q), flagged,
    ranks ("STUDY rank/q" of every instance).
    """
    if not 0 < top < ordinary < 1:
        raise ValueError(f"need 0 < top < ordinary < 1, got top={top}, ordinary={ordinary}")
    t = instances(ranking)
    if t is None:
        return None
    t = t[t.groupby("line")["study"].transform("nunique") >= 2].sort_values(["line", "q", "study"], kind="mergesort")
    g = t.groupby("line", sort=False)
    worst, best = g.head(1).set_index("line"), g.tail(1).set_index("line")
    label = t["study"] + " " + t["rank"].astype(int).astype(str) + "/" + t["q"].map("{:.2f}".format)
    out = pd.DataFrame({"studies": g.size(), "worst_study": worst["study"], "worst_rank": worst["rank"].astype(int),
                        "worst_q": worst["q"], "best_study": best["study"], "best_q": best["q"]})
    out["spread"] = out["best_q"] - out["worst_q"]
    out["flagged"] = (out["worst_q"] <= top) & (out["best_q"] >= ordinary)
    out["ranks"] = label.groupby(t["line"], sort=False).agg(", ".join)
    out = out.rename_axis("line").reset_index()
    return out.sort_values(["flagged", "spread", "worst_q", "line"], ascending=[False, False, True, True],
                           kind="mergesort").reset_index(drop=True)


def study_table(ranking: pd.DataFrame) -> pd.DataFrame | None:
    """Per study: instances, lines shared with another study, median overall percentile (the study-level shift)."""
    t = instances(ranking)
    if t is None:
        return None
    n = len(t)
    t = t.assign(overall_q=(t["rank"] - 0.5) / n, shared=t.groupby("line")["study"].transform("nunique") >= 2)
    g = t.groupby("study")
    return pd.DataFrame({"instances": g.size(), "shared_lines": g["shared"].sum(),
                         "median_overall_q": g["overall_q"].median()}).reset_index()


def agreement_table(ranking: pd.DataFrame) -> pd.DataFrame | None:
    """Spearman correlation of the instances' scores for each pair of studies, over the lines they share."""
    t = instances(ranking)
    if t is None:
        return None
    wide = t.pivot_table(index="line", columns="study", values="score", aggfunc="first")
    wide = wide.replace(-np.inf, np.nan)
    studies = list(wide.columns)
    rows = []
    for i, a in enumerate(studies):
        for b in studies[i + 1:]:
            both = wide[[a, b]].dropna()
            rho = both[a].rank().corr(both[b].rank()) if len(both) >= 3 else np.nan
            rows.append({"study_a": a, "study_b": b, "shared_lines": len(both), "spearman": float(rho)})
    return pd.DataFrame(rows)


@dataclass
class CrossStudy:
    """Everything the report says about cross-study disagreement."""

    lines: pd.DataFrame  # disagreement_table
    studies: pd.DataFrame  # study_table
    agreement: pd.DataFrame  # agreement_table
    chance_flags: float
    top: float
    ordinary: float

    @property
    def flagged(self) -> pd.DataFrame:
        return self.lines[self.lines["flagged"]]

    def text(self) -> str:
        n, f = len(self.lines), len(self.flagged)
        agree = "; ".join(f"{r.study_a}~{r.study_b} {r.spearman:.2f} over {r.shared_lines} lines"
                          for r in self.agreement.itertuples())
        shift = ", ".join(f"{r.study} {r.median_overall_q:.2f}" for r in self.studies.itertuples())
        names = ", ".join(f"{r.line} ({r.worst_study})" for r in self.flagged.head(8).itertuples())
        return (f"{n} cell lines are measured by two or more studies (ids `STUDY.line`). Each instance is ranked "
                f"among its own study's instances (q: 0 = most suspicious), so a study whose labels are harder "
                f"to learn as a whole does not flag every line. A line is flagged when one study's instance is in "
                f"its study's top {self.top:.0%} and another's at or beyond the median (q >= {self.ordinary:.2f}): "
                f"that study's measurements of the line, not the line, are the likely problem. "
                f"**{f} flagged** ({names or 'none'}{', ...' if f > 8 else ''}); if instances ranked independently "
                f"at random, {self.chance_flags:.1f} would be. Spearman agreement of the instances' scores: "
                f"{agree or 'n/a'} (0 = unrelated, 1 = a line ranks the same in every study). Median overall "
                f"percentile of each study's instances (0.5 = no study-level shift): {shift}.")


def analyse(ranking: pd.DataFrame, top: float = TOP, ordinary: float = ORDINARY) -> CrossStudy | None:
    """The cross-study view of a ranking, or None when the cells are not source-prefixed studies."""
    lines = disagreement_table(ranking, top, ordinary)
    if lines is None:
        return None
    chance = float(sum(chance_flag_probability(int(k), top, ordinary) for k in lines["studies"]))
    return CrossStudy(lines, study_table(ranking), agreement_table(ranking), chance, top, ordinary)


def sections(rep, ranking: pd.DataFrame, top: int = 30) -> list:
    """The report's "Cross-study disagreement" section (empty list when the data is not multi-study).

    ``rep`` is the ``report.Report`` being built: the full table goes to ``cross_study.csv``.
    """
    cs = analyse(ranking)
    if cs is None:
        return []
    rep.csv("cross_study.csv", cs.lines)
    rep.summary["cross_study"] = cs
    return [Section("Cross-study disagreement", cs.text(), None,
                    [(f"top {min(top, len(cs.lines))} of cross_study.csv (flagged first)", cs.lines.head(top)),
                     ("per study", cs.studies), ("agreement between studies", cs.agreement)])]
