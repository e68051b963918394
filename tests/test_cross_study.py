"""Cross-study disagreement (hbl_mpi/cross_study.py) on rankings whose answer is known by construction."""

import io

import numpy as np
import pandas as pd
import pytest

from hbl_mpi.report import cross_study as X
from hbl_mpi.analysis.ranking import rank_scores


def ranking_of(scores: dict) -> pd.DataFrame:
    return rank_scores(pd.Series(scores))


def consistent_scores(n_lines=40, studies=("A", "B"), seed=0, noise=0.05):
    """Every study ranks the lines alike: score = the line's own level + a little study noise."""
    rng = np.random.default_rng(seed)
    level = rng.normal(size=n_lines)
    return {f"{s}.L{i:02d}": level[i] + noise * rng.normal() for s in studies for i in range(n_lines)}


def test_a_study_specific_instance_is_flagged_and_nothing_else():
    sc = consistent_scores()
    line = min((c for c in sc if c.startswith("B.")), key=sc.get)[2:]  # B's least suspicious line
    sc[f"A.{line}"] = 10.0  # study A's measurements of it are bad; B's instance stays ordinary
    lines = X.disagreement_table(ranking_of(sc))
    assert list(lines.loc[lines["flagged"], "line"]) == [line]
    row = lines.iloc[0]
    assert (row["line"], row["worst_study"], row["worst_rank"], row["best_study"]) == (line, "A", 1, "B")
    assert row["worst_q"] == pytest.approx(0.5 / 40) and row["studies"] == 2


def test_a_line_bad_in_every_study_is_not_flagged():
    sc = consistent_scores()
    sc["A.L07"] = sc["B.L07"] = 10.0  # the line itself resists learning: no disagreement
    lines = X.disagreement_table(ranking_of(sc))
    assert not lines["flagged"].any()
    assert lines.set_index("line").loc["L07", "spread"] == pytest.approx(0.0)


def test_a_study_level_shift_flags_nothing():
    sc = consistent_scores(studies=("A", "B", "C"))
    sc = {c: v + (100.0 if c.startswith("C.") else 0.0) for c, v in sc.items()}  # all of C ranks first
    cs = X.analyse(ranking_of(sc))
    assert not cs.lines["flagged"].any()  # within-study percentiles remove the shift...
    shift = cs.studies.set_index("study")["median_overall_q"]
    assert shift["C"] < 0.2 < 0.5 < shift["A"]  # ...which the per-study table shows
    agree = cs.agreement.set_index(["study_a", "study_b"])["spearman"]
    assert (agree > 0.95).all()


def test_only_shared_lines_and_prefixed_ids_count():
    sc = consistent_scores(n_lines=10)
    sc["A.ONLY_A"] = 5.0  # one study only: not a cross-study line
    lines = X.disagreement_table(ranking_of(sc))
    assert "ONLY_A" not in set(lines["line"]) and len(lines) == 10
    assert X.analyse(ranking_of({"c1": 1.0, "c2": 2.0})) is None  # synthetic ids: no section
    assert X.analyse(ranking_of({"A.x": 1.0, "A.y": 2.0})) is None  # one study
    assert X.analyse(ranking_of({"A.x": 1.0, "B.y": 2.0})) is None  # no line in two studies
    assert X.split_ids(["GDSC1.NCI-H23", "CCLE.A.B"])["line"].tolist() == ["NCI-H23", "A.B"]  # split at the first dot


@pytest.mark.parametrize("k", [2, 3])
def test_chance_rate_matches_simulation(k):
    """Independent uniform instances: the flag rate is the closed form (Monte Carlo, 3,000 lines)."""
    rng = np.random.default_rng(k)
    n = 3000
    studies = [chr(65 + i) for i in range(k)]
    sc = {f"{s}.L{i}": rng.random() for s in studies for i in range(n)}
    cs = X.analyse(ranking_of(sc))
    p = X.chance_flag_probability(k)
    assert cs.chance_flags == pytest.approx(n * p)
    se = np.sqrt(p * (1 - p) / n)
    assert abs(cs.lines["flagged"].mean() - p) < 4 * se
    assert p == pytest.approx({2: 0.10, 3: 1 - 0.9 ** 3 - 0.125 + 0.4 ** 3}[k])


def test_text_and_report_section():
    from hbl_mpi.report.build import Report

    sc = consistent_scores()
    line = min((c for c in sc if c.startswith("A.")), key=sc.get)[2:]
    sc[f"B.{line}"] = 9.0
    rep = Report("t", "")
    secs = X.sections(rep, ranking_of(sc))
    assert len(secs) == 1 and secs[0].title == "Cross-study disagreement"
    assert f"**1 flagged** ({line} (B))" in secs[0].text
    assert "cross_study.csv" in rep.files
    back = pd.read_csv(io.BytesIO(rep.files["cross_study.csv"]))
    assert back.loc[0, "line"] == line and bool(back.loc[0, "flagged"])
    assert X.sections(Report("t", ""), ranking_of({"c1": 1.0, "c2": 2.0})) == []


def test_bad_thresholds():
    with pytest.raises(ValueError):
        X.disagreement_table(ranking_of(consistent_scores()), top=0.6, ordinary=0.5)
