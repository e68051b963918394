"""Enrichment of metadata groups among the top suspects (issue 30 part 2), on cases with known answers."""

import io
from math import comb

import numpy as np
import pandas as pd
import pytest

from hbl_mpi.analysis import enrichment as E
from hbl_mpi.commands import report as cmd
from hbl_mpi.core.errors import InputError

from test_report import args_for, fake_run


def _ranking(n):
    return pd.DataFrame({"cell": [f"c{i:03d}" for i in range(n)], "rank": np.arange(1, n + 1)})


def test_bh_matches_a_hand_computation():
    p = [0.01, 0.04, 0.03, 0.005, 0.5]
    # sorted 0.005, 0.01, 0.03, 0.04, 0.5 -> x 5/rank: 0.025, 0.025, 0.05, 0.05, 0.5 (already monotone)
    assert np.allclose(E.bh(p), [0.025, 0.05, 0.05, 0.025, 0.5])
    # a non-monotone case: 0.02*3/1 = 0.06 > 0.025*3/2 = 0.0375: the minimum from the right wins
    assert np.allclose(E.bh([0.02, 0.025, 0.9]), [0.0375, 0.0375, 0.9])
    assert np.allclose(E.bh([0.6, 0.9]), [0.9, 0.9]) and E.bh([]).size == 0
    assert E.bh([0.5, 0.9, 0.99]).max() <= 1.0


def test_fisher_tail_equals_scipys_fisher_exact():
    from scipy.stats import fisher_exact

    for table in ([[20, 20], [0, 160]], [[3, 0], [0, 24]], [[0, 5], [20, 175]], [[4, 36], [16, 144]],
                  [[40, 184], [10, 685]], [[1, 0], [0, 0]], [[0, 3], [2, 0]]):
        (a, b), (c, d) = table
        odds, p = E.fisher_greater(a, b, c, d)
        ref_odds, ref_p = fisher_exact(table, alternative="greater")
        assert p == pytest.approx(ref_p, rel=1e-9, abs=1e-300)
        assert (np.isnan(odds) and np.isnan(ref_odds)) or odds == pytest.approx(ref_odds)


def test_a_planted_concentration_is_found_with_the_exact_p():
    rk = _ranking(200)
    group = np.where(np.arange(200) < 40, "A", np.array(["B", "C", "D", "E"] * 50))  # A: ranks 1-40
    meta = pd.DataFrame({"cell": rk["cell"], "lab": group})
    t = E.enrichment(rk, meta, ks=(20,))
    a = t[(t["value"] == "A")].iloc[0]
    assert (a["in_top"], a["n_value"], a["n_cells"]) == (20, 40, 200)
    assert a["p"] == pytest.approx(comb(40, 20) / comb(200, 20), rel=1e-6)  # P(all 20 from A), hypergeometric
    assert a["q"] < 0.01 and t.iloc[0]["value"] == "A"
    s = E.sentence(t)
    assert "lab = A" in s and "20 of 20" in s and "40 of 200" in s
    assert list(t.columns) == E.COLUMNS


def test_a_uniform_spread_is_not_flagged():
    rk = _ranking(200)
    meta = pd.DataFrame({"cell": rk["cell"], "lab": np.array(["A", "B", "C", "D", "E"] * 40),
                         "site": np.array(["x", "y"] * 100)})
    t = E.enrichment(rk, meta)
    assert len(t) == (5 + 2) * 2 and (t["q"] >= 0.01).all() and E.sentence(t) == ""
    hits = 0
    for seed in range(20):  # random groups: a false q < 0.01 is rare
        lab = np.random.default_rng(seed).choice(list("ABCDE"), 200)
        hits += (E.enrichment(rk, pd.DataFrame({"cell": rk["cell"], "lab": lab}))["q"] < 0.01).any()
    assert hits <= 1


def test_missing_values_singletons_and_large_k():
    rk = _ranking(30)
    lab = np.array([""] * 10 + ["A"] * 10 + ["B"] * 9 + ["solo"])
    t = E.enrichment(rk, pd.DataFrame({"cell": rk["cell"], "lab": lab, "id": rk["cell"]}), ks=(10, 30))
    assert set(t["value"]) == {"A", "B"} and set(t["k"]) == {10}  # no "" value, no singleton, no k >= n
    assert t.set_index("value").loc["A", "in_top"] == 0  # the top 10 have no value: counted as other cells
    assert E.enrichment(rk, None).empty


def _report(path, **kw):
    """Only the parts enrichment touches (ranking, enrichment, summary): no figures of the paper."""
    from hbl_mpi.report import build as REP

    rep = REP.build([path], builders=(REP.ranking_sections, REP.enrichment_sections, REP.summary_sections), **kw)
    return rep, REP.render_markdown(rep)


def test_report_writes_enrichment_and_says_it_in_the_summary(tmp_path):
    a = fake_run(tmp_path / "a.h5", "EXP2", seed=1)  # planted C03, C11, C20 rank at the top
    cells = [f"C{i:02d}" for i in range(27)]
    lab = ["bad" if c in ("C03", "C11", "C20") else ("x" if i % 2 else "y") for i, c in enumerate(cells)]
    with pd.HDFStore(a, mode="a") as st:
        st.put("cell_metadata", pd.DataFrame({"cell": cells, "lab": lab}), format="table", track_times=False)
    rep, md = _report(a, enrich_k=cmd.parse_ks("10,3"))
    t = pd.read_csv(io.BytesIO(rep.files["enrichment.csv"]))
    assert list(t.columns) == E.COLUMNS and set(t["k"]) == {3, 10}
    bad = t[(t["value"] == "bad") & (t["k"] == 3)].iloc[0]
    assert bad["in_top"] == 3 and bad["q"] < 0.01
    summary = md.split("## Summary", 1)[1].split("##", 1)[0]
    assert "lab = bad: 3 of 3, against 3 of 27 cells" in summary
    for bad_k in ("ten", "0", ""):
        with pytest.raises(InputError, match="--enrich-k"):
            cmd.parse_ks(bad_k)


def test_report_without_metadata_says_so(tmp_path):
    rep, md = _report(fake_run(tmp_path / "a.h5", "EXP2", seed=1))
    assert "enrichment.csv" not in rep.files and "no cell metadata" in md
