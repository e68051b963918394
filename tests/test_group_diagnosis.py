"""``distinct_group`` (issue 30 part 4) on held-out grids whose answer is known by construction."""

import numpy as np
import pandas as pd

from hbl_mpi.analysis import diagnosis as D
from hbl_mpi.analysis import group_diagnosis as G

from test_report import PLANTED, add_cell_pred, fake_run


def _grid(shared: bool, seed: int = 0):
    """60 cells x 40 drugs: cells 0-9 ("Suspension") share one residual profile when ``shared``;
    cell 20 has label noise of its own; the rest have small independent residuals."""
    rng = np.random.default_rng(seed)
    C, Dn = 60, 40
    pred = rng.normal(0.7, 0.1, (C, Dn))
    resid = rng.normal(0, 0.05, (C, Dn))
    if shared:
        resid[:10] += rng.normal(0, 0.3, Dn)[None, :]
    resid[20] = rng.normal(0, 0.5, Dn)
    cells = np.array([f"c{i:02d}" for i in range(C)], dtype=object)
    grid = D.Grid(cells, np.array([f"d{j}" for j in range(Dn)], dtype=object), pred, pred + resid,
                  np.array(["1.1"] * C, dtype=object), np.ones(C, dtype=np.int64))
    meta = pd.DataFrame({"cell": cells, "growth": ["Suspension"] * 10 + ["Adherent"] * 50,
                         "site": rng.choice(["a", "b"], C)})
    table = pd.DataFrame({"cell": cells, "flagged": [i < 10 or i in (20, 30) for i in range(C)],
                          "diagnosis": ["distinct"] * 5 + ["none"] * 5 + ["none"] * 50, "confidence": 1.0,
                          "likely_identity": ""})
    table.loc[20, "diagnosis"] = "label_noise"
    return grid, meta, table


def test_a_group_that_errs_together_is_named_and_a_private_error_is_not():
    grid, meta, table = _grid(shared=True)
    ev = G.group_evidence(grid, meta).set_index("cell")
    heme = ev.iloc[:10]
    assert (heme["group_column"] == "growth").all() and (heme["group_value"] == "Suspension").all()
    assert heme["group_coherence"].min() > 0.8 and heme["group_share"].min() > 0.5
    assert ev.iloc[10:]["group_share"].max() < G.GROUP_SHARE
    out = G.apply_group_rule(table, grid, meta, bootstrap=50).set_index("cell")
    assert (out.iloc[:10]["diagnosis"] == "distinct_group").all()
    assert out.iloc[:10]["confidence"].min() > 0.9
    assert out.loc["c20", "diagnosis"] == "label_noise"  # its own evidence says bad data: kept
    assert out.loc["c30", "diagnosis"] == "none"  # flagged, but its group does not err as it does
    assert set(out["diagnosis"]) <= set(D.KINDS)


def test_no_shared_profile_no_distinct_group():
    grid, meta, table = _grid(shared=False)
    out = G.apply_group_rule(table, grid, meta, bootstrap=0)
    assert not (out["diagnosis"] == "distinct_group").any()
    assert out["group_share"].max() < G.GROUP_SHARE
    same = G.apply_group_rule(table, grid, None)  # no metadata: the diagnosis as it was
    assert list(same["diagnosis"]) == list(table["diagnosis"]) and same["group_column"].eq("").all()


def test_group_profile_says_how_the_cells_group_ranks():
    meta = pd.DataFrame({"cell": ["a", "b", "c", "d"], "lab": ["x", "x", "y", "y"], "id": ["1", "2", "3", "4"]})
    rk = pd.DataFrame({"cell": ["a", "b", "c", "d"], "rank": [1, 3, 2, 4], "diagnosis": ["distinct_group"] * 4})
    p = G.group_profile(meta, rk, "a")
    assert p.to_dict("records") == [{"column": "lab", "value": "x", "cells": 2, "median_rank": 2.0,
                                     "of_all_cells": 4, "in_top_50": 2, "distinct_group": 2}]
    assert G.group_profile(meta, rk, "zz").empty and G.group_profile(None, rk, "a").empty


def test_cell_pages_show_the_cells_metadata(tmp_path):
    from hbl_mpi.report import build as REP

    a = fake_run(tmp_path / "a.h5", "EXP2", seed=1)
    add_cell_pred(a)
    cells = [f"C{i:02d}" for i in range(27)]
    meta = pd.DataFrame({"cell": cells, "lab": ["p" if c in PLANTED else "q" for c in cells]})
    with pd.HDFStore(a, mode="a") as st:
        st.put("cell_metadata", meta, format="table", track_times=False)
    rep = REP.build([a], cells=2, builders=(REP.ranking_sections, REP.diagnosis_sections, REP.cell_page_sections))
    pages = [s for s in rep.sections if s.title.startswith("Cell C")]
    assert pages
    for s in pages:
        caps = [c for c, _ in s.tables]
        assert "cell metadata" in caps and any(c.startswith("how its groups behave") for c in caps)
    rk = rep.summary["diagnosis"]
    assert {"group_column", "group_coherence"} <= set(rk.columns) and rep.summary["group_diagnosis_seconds"] >= 0


def test_the_reference_rule_names_replicate_disagreement():
    """A flagged cell whose second screen disagrees (agreement < ref_agree / 2) while the model sides
    with that screen is ``replicate_disagreement``; agreeing screens make an error kind ``distinct``."""
    ref = pd.Series({"screen_agreement": 0.1, "model_ref_corr": 0.6, "model_this_corr": 0.2})
    assert D._with_reference("none", True, ref, D.RULES) == "replicate_disagreement"
    assert D._with_reference("none", False, ref, D.RULES) == "none"
    agree = pd.Series({"screen_agreement": 0.9, "model_ref_corr": 0.2, "model_this_corr": 0.3})
    assert D._with_reference("label_noise", True, agree, D.RULES) == "distinct"
    assert "replicate_disagreement" in D.ERROR_KINDS and "distinct_group" in D.KINDS
