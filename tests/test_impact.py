"""The impact estimator on fabricated results whose answer is known by construction.

Every node's holdout MSE of cell c is built as
    base_c + stage drift + self_c [c trained on] + sum over trained cells j != c of alpha_j + noise,
so learning cell j changes every other cell's error by alpha_j (its impact, known), and a
cell's own data changes its own error by self_c (its resist, which must not leak into impact).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hbl_mpi.analysis.curation import curate_selection, harm_order
from hbl_mpi.analysis.impact import add_impact, cell_impact, combined_score, family_contrasts, noise_floor, two_way_fit
from hbl_mpi.tree.plan import PlanSpec, build_plan


def fabricate(n_cells=64, n=4, s=2, alpha=None, self_effect=None, mu=0.0, noise=0.0, seed=0,
              drift=(0.0, -0.3, -0.5, -0.6)):
    ids = np.array([f"C{i:03d}" for i in range(n_cells)], dtype=object)
    drugs = np.array(["D0"], dtype=object)
    cell_index = np.repeat(np.arange(n_cells), 10)
    plan = build_plan(ids, drugs, cell_index, np.zeros(len(cell_index), dtype=np.int64),
                      PlanSpec(n=n, s=s, seed=seed, holdout_fraction=0.0))
    alpha = {} if alpha is None else alpha
    self_effect = {} if self_effect is None else self_effect
    a = np.array([alpha.get(c, 0.0) + mu for c in ids])
    sf = np.array([self_effect.get(c, 0.0) for c in ids])
    rng = np.random.default_rng(seed + 1)
    base = 1.0 + rng.random(n_cells)
    rows = []
    for node in plan.trained_nodes():
        trained = np.zeros(n_cells, dtype=bool)
        trained[plan.train_cells(node)] = True
        others = (a * trained).sum() - a * trained  # sum over trained j != c
        mse = base + drift[plan.nodes[node].stage] + sf * trained + others
        mse = mse + noise * rng.standard_normal(n_cells)
        rows.append(pd.DataFrame({"node": node, "cell": ids, "n_rows": 3, "mse": mse}))
    return plan, plan.to_frame(), pd.concat(rows, ignore_index=True)


def test_two_way_fit_recovers_child_effects_with_missing_entries():
    rng = np.random.default_rng(0)
    d = np.array([0.3, -0.1, -0.2])
    b = rng.random(20)
    y = b[None, :] + d[:, None]
    y[0, :5] = np.nan
    y[1, 5:9] = np.nan
    np.testing.assert_allclose(two_way_fit(y, np.ones(20)), d - d.mean(), atol=1e-10)


def test_a_harmful_cell_is_found_and_its_leaf_mates_share_its_impact():
    plan, pf, ct = fabricate(alpha={"C007": 0.4})
    res = cell_impact(ct, pf)
    imp = res.cells.set_index("cell")
    leaf = imp.loc["C007", "impact_node"]
    mates = imp.index[imp["impact_node"] == leaf]
    assert len(mates) == 4
    # the leaf's four cells split the cell's 0.4 (the tree cannot tell them apart)
    np.testing.assert_allclose(imp.loc[mates, "impact"], 0.1, atol=1e-9)
    np.testing.assert_allclose(imp.drop(mates)["impact"], 0.0, atol=1e-9)


def test_own_error_never_enters_impact():
    """A cell whose own data is unlearnable (large self effect) but harms nobody has impact 0."""
    plan, pf, ct = fabricate(self_effect={"C003": 5.0, "C040": 3.0}, alpha={"C020": -0.2})
    imp = cell_impact(ct, pf).cells.set_index("cell")
    assert imp.loc["C003", "impact"] == pytest.approx(0.0, abs=1e-9)
    assert imp.loc["C040", "impact"] == pytest.approx(0.0, abs=1e-9)
    beneficial = imp.index[imp["impact_node"] == imp.loc["C020", "impact_node"]]
    np.testing.assert_allclose(imp.loc[beneficial, "impact"], -0.05, atol=1e-9)


def test_a_common_effect_of_more_data_does_not_favour_large_leaves():
    # 70 cells, N = 4, S = 2: the last part of each cut takes the remainder, so leaves have 4-7 cells
    plan, pf, ct = fabricate(n_cells=70, mu=-0.01, alpha={"C011": 0.3})
    imp = cell_impact(ct, pf).cells.set_index("cell")
    sizes = imp["impact_group_cells"]
    assert sizes.nunique() > 1
    harm_leaf = imp["impact_node"] == imp.loc["C011", "impact_node"]
    # everyone else: impact 0 whatever their leaf's size; the harmful leaf: 0.3 / its size
    np.testing.assert_allclose(imp.loc[~harm_leaf, "impact"], 0.0, atol=1e-9)
    np.testing.assert_allclose(imp.loc[harm_leaf, "impact"], 0.3 / sizes[harm_leaf], atol=1e-9)


def test_three_stages_with_noise_rank_the_harmful_leaves_first_and_sd_covers_the_error():
    harm = {"C005": 0.05, "C100": 0.05, "C180": 0.05}
    plan, pf, ct = fabricate(n_cells=192, s=3, alpha=harm, noise=0.002, seed=3)
    res = cell_impact(ct, pf)
    imp = res.cells.set_index("cell")
    harmful_leaves = {imp.loc[c, "impact_node"] for c in harm}
    top = imp.sort_values("impact", ascending=False).head(9)
    assert set(top["impact_node"]) == harmful_leaves
    assert (imp.loc[list(harm), "impact_z"] > 3).all()
    clean = imp[~imp["impact_node"].isin(harmful_leaves)]
    # clean cells sit inside their own noise floor
    assert (clean["impact"].abs() < 3 * clean["impact_sd"]).mean() > 0.95
    assert set(res.noise) == {1, 2, 3} and all(v > 0 for v in res.noise.values())


def test_noise_floor_borrows_for_small_stages():
    con = pd.DataFrame({"stage": [1] * 4 + [2] * 16, "effect": [5.0, -5, 1, -1] + list(np.linspace(-1, 1, 16))})
    fl = noise_floor(con)
    assert fl[1] == fl[2] > 0


def test_failed_child_and_missing_nodes_are_tolerated():
    plan, pf, ct = fabricate(alpha={"C007": 0.4})
    nodes = pd.DataFrame({"node": plan.trained_nodes(), "status": "done"})
    nodes.loc[nodes["node"] == "1.3", "status"] = "failed"
    gone = nodes.loc[nodes["node"].str.startswith("1.3"), "node"]
    ct = ct[~ct["node"].isin(set(gone) - {"1.3"})]
    res = cell_impact(ct, pf, nodes)
    assert "1.3" not in set(res.contrasts["child"])
    assert res.cells["impact"].notna().all()
    top = res.cells.sort_values("impact", ascending=False).iloc[0]
    assert top["impact_node"] == res.cells.set_index("cell").loc["C007", "impact_node"]


def test_family_contrasts_sign_and_references():
    plan, pf, ct = fabricate(alpha={"C007": 0.4})
    con = family_contrasts(ct, pf)
    node = plan.nodes
    child = next(k for k in node["1"].children if plan.cell_ids[plan.val_cells(k)].tolist().count("C007"))
    row = con[(con["parent"] == "1") & (con["child"] == child)].iloc[0]
    assert row["effect"] == pytest.approx(0.4 - 0.4 / 4)
    assert row["reference_cells"] == 64 - row["group_cells"]


def test_combined_score_and_ranking_columns():
    resist = pd.Series([0.0, 1.0, 2.0, 10.0, 0.5], index=list("abcde"))
    impact = pd.Series([0.0, 0.0, 0.1, 0.0, 0.3], index=list("abcde"))
    comb = combined_score(resist, impact)
    assert comb.idxmax() in {"d", "e"} and comb["a"] < comb["c"]
    plan, pf, ct = fabricate(alpha={"C007": 0.4})
    res = cell_impact(ct, pf)
    ranking = pd.DataFrame({"cell": res.cells["cell"], "score": np.arange(64.0), "rank": np.arange(1, 65)})
    out = add_impact(ranking, res)
    assert {"score", "impact", "impact_sd", "combined"} <= set(out.columns)
    assert list(out["score"]) == list(ranking["score"])


def test_harm_order_and_curate_selection():
    rk = pd.DataFrame({"cell": list("abcdef"), "score": [5.0, 1.0, 2.0, 0.0, 3.0, -1.0],
                       "impact": [0.0, 0.2, 0.2, -0.3, 0.0, 0.1]})
    rk["combined"] = combined_score(rk.set_index("cell")["score"], rk.set_index("cell")["impact"]).to_numpy()
    # a leaf's shared impact: ties broken by the resist score
    assert list(harm_order(rk, "impact")["cell"]) == ["c", "b", "f", "a", "e", "d"]
    assert list(harm_order(rk, "resist")["cell"][:2]) == ["a", "e"]
    drop = curate_selection(rk, "impact", 2, "drop")
    assert list(drop["cell"]) == ["c", "b"] and list(drop.columns) == ["cell", "score", "impact", "reason"]
    assert "#1 most harmful of 6 by impact" in drop["reason"][0]
    keep = curate_selection(rk, "impact", 2, "keep")
    assert list(keep["cell"]) == ["d", "e"] and "most beneficial" in keep["reason"][0]
    for bad in (0, 6):
        with pytest.raises(ValueError):
            curate_selection(rk, "impact", bad, "drop")


def test_one_robust_z_for_every_score():
    """robust.robust_z: (x - median) / 1.4826 MAD; +-inf is missing; no spread gives the
    centred values (or zeros when asked)."""
    from hbl_mpi.analysis.robust import robust_z

    x = pd.Series([1.0, 2.0, 3.0, 4.0, 100.0, np.inf])
    z = robust_z(x)
    mad = 1.4826 * np.median(np.abs(np.array([1, 2, 3, 4, 100.0]) - 3.0))
    assert z.iloc[:5].tolist() == pytest.approx(((np.array([1, 2, 3, 4, 100.0]) - 3.0) / mad).tolist())
    assert np.isnan(z.iloc[5])
    flat = pd.Series([2.0, 2.0, 2.0])
    assert robust_z(flat).tolist() == [0.0, 0.0, 0.0]
    assert robust_z(flat, constant="zero").tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        robust_z(flat, constant="other")
