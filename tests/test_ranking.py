"""Cell ranking and detection metrics on hand-made per-cell validation tables."""

import numpy as np
import pandas as pd
import pytest

from hbl_mpi import ranking as R

CELLS = [f"C{i}" for i in range(8)]
STAGE1 = {c: "1.1" if i < 4 else "1.2" for i, c in enumerate(CELLS)}
STAGE2 = {c: ["1.1.1", "1.1.2", "1.2.1", "1.2.2"][i // 2] for i, c in enumerate(CELLS)}


def make_cell_val(bad="C5", factor=8.0) -> pd.DataFrame:
    rows = []
    for c in CELLS:
        rows.append((STAGE1[c], c, 10, 1.0 * (factor if c == bad else 1.0)))
        rows.append((STAGE2[c], c, 10, 0.5 * (factor if c == bad else 1.0)))
    return pd.DataFrame(rows, columns=["node", "cell", "n_rows", "mse"])


def make_nodes(cv: pd.DataFrame) -> pd.DataFrame:
    agg = cv.groupby("node").apply(lambda g: np.average(g["mse"], weights=g["n_rows"]), include_groups=False)
    nodes = pd.DataFrame({"node": agg.index, "val_loss": agg.to_numpy()})
    nodes["parent"] = [n.rpartition(".")[0] for n in nodes["node"]]
    nodes["stage"] = [n.count(".") for n in nodes["node"]]
    nodes["status"] = "done"
    return nodes


def test_cell_stage_table_ratios():
    cv = make_cell_val()
    t = R.cell_stage_table(cv, make_nodes(cv))
    assert len(t) == 16 and set(t["stage"]) == {1, 2}
    c5 = t[t["cell"] == "C5"].set_index("stage")
    assert c5.loc[1, "stage_median"] == 1.0 and c5.loc[2, "stage_median"] == 0.5
    assert c5.loc[1, "log_ratio"] == pytest.approx(np.log(8))
    assert c5.loc[2, "node"] == "1.2.1"
    # node 1.2.1 validates C4 (0.5) and C5 (4.0): val_loss 2.25; parent 1.2 has (3 x 1 + 8) / 4 = 2.75
    assert c5.loc[2, "outlier_level"] == pytest.approx((2.25 - 2.75) / 2.75)
    assert (t.loc[t["cell"] != "C5", "log_ratio"] == 0).all()


@pytest.mark.parametrize("method", list(R.METHODS))
def test_every_method_puts_the_bad_cell_first_or_ties(method):
    cv = make_cell_val()
    t = R.cell_stage_table(cv, make_nodes(cv))
    s = R.METHODS[method](t)
    assert set(s.index) == set(CELLS)
    if method != "node_outlier":  # the node-level signal is diluted by the cell's node-mate
        assert s.idxmax() == "C5"
        assert (s.drop("C5") < s["C5"]).all()


def test_rank_cells_evidence():
    cv = make_cell_val()
    nodes = make_nodes(cv)
    r = R.rank_cells(cv, nodes)
    assert list(r["rank"]) == list(range(1, 9))
    top = r.iloc[0]
    assert top["cell"] == "C5" and top["score"] == pytest.approx(np.log(8))
    assert top["node"] == "1.2.1" and top["stage"] == 2
    assert top["mse"] == 4.0 and top["mse_ratio"] == pytest.approx(8.0)
    assert top["stages"] == 2 and top["parent_val_loss"] == pytest.approx(2.75)
    # ties among the clean cells are broken by cell id
    assert list(r["cell"].iloc[1:]) == sorted(c for c in CELLS if c != "C5")
    with pytest.raises(ValueError):
        R.rank_cells(cv, nodes, method="nope")


def test_train_added_blame_uses_the_plan():
    cv = make_cell_val()
    nodes = make_nodes(cv)
    plan = pd.DataFrame({"node": ["1.1.1", "1.1.2"], "cell": ["C2", "C0"], "role": ["train_added"] * 2})
    r = R.rank_cells(cv, nodes, plan=plan).set_index("cell")
    lv = R.cell_stage_table(cv, nodes).drop_duplicates("node").set_index("node")["outlier_level"]
    assert r.loc["C2", "train_added_blame"] == pytest.approx(lv["1.1.1"])
    assert np.isnan(r.loc["C5", "train_added_blame"])


def test_detection_metrics_known_answers():
    score = pd.Series(np.arange(8.0), index=CELLS)  # C7 most suspicious, C0 least
    truth = pd.DataFrame({"cell": ["C7", "C0"], "kind": ["shift", "swap"]})
    d = R.detection_metrics(score, truth).set_index("kind")
    assert d.loc["all", "positives"] == 2 and d.loc["all", "negatives"] == 6
    assert d.loc["all", "auroc"] == pytest.approx(0.5)  # C7 beats all 6 clean cells, C0 none
    assert d.loc["all", "average_precision"] == pytest.approx((1 + 2 / 8) / 2)
    assert d.loc["all", "precision_at_k"] == 0.5
    assert d.loc["shift", "auroc"] == 1.0 and d.loc["shift", "precision_at_k"] == 1.0
    assert d.loc["swap", "auroc"] == 0.0 and d.loc["swap", "precision_at_k"] == 0.0
    assert d.loc["swap", "negatives"] == 6


def test_unscored_planted_cells_rank_last():
    score = pd.Series([3.0, 2.0, 1.0], index=["A", "B", "C"])
    truth = pd.DataFrame({"cell": ["Z"], "kind": ["label_noise"]})
    d = R.detection_metrics(score, truth).set_index("kind")
    assert d.loc["all", "unscored"] == 1
    assert d.loc["all", "auroc"] == 0.0 and d.loc["all", "precision_at_k"] == 0.0


def test_combine_and_compare():
    cv = make_cell_val()
    nodes = make_nodes(cv)
    a = R.rank_cells(cv, nodes)
    b = R.rank_cells(make_cell_val(bad="C1", factor=2.0), nodes)
    c = R.combine_rankings([a, b]).set_index("cell")
    assert c.loc["C5", "rank"] == 1 and c.loc["C1", "rank"] == 2
    truth = pd.DataFrame({"cell": ["C5"], "kind": ["label_noise"]})
    cmp = R.compare_methods(cv, nodes, truth)
    assert set(cmp["method"]) == set(R.METHODS)
    best = cmp[(cmp["kind"] == "all") & (cmp["method"] == R.DEFAULT_METHOD)].iloc[0]
    assert best["auroc"] == 1.0 and best["precision_at_k"] == 1.0
