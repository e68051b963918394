"""Cell ranking and detection metrics on hand-made per-cell validation tables."""

import numpy as np
import pandas as pd
import pytest

from hbl_mpi.analysis import ranking as R

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


# ---------------------------------------------------------------------------
# baselines (hbl_mpi/baselines.py): the Isolation Forest parts need no training
# ---------------------------------------------------------------------------
def tiny_dataset(n_cells=30, n_drugs=12, seed=0):
    from hbl_mpi.data.dataset import CELL, DRUG, Dataset, FeatureGroup

    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n_cells, 6)).astype(np.float32)
    feats[4] += 12.0  # C04: an expression profile far from every other cell
    dfeats = rng.normal(size=(n_drugs, 3)).astype(np.float32)
    ci, di = np.meshgrid(np.arange(n_cells), np.arange(n_drugs), indexing="ij")
    ci, di = ci.ravel(), di.ravel()
    y = (0.5 + 0.1 * dfeats[di, 0] + 0.02 * rng.normal(size=len(ci))).astype(np.float32)
    y[ci == 9] += 0.6  # C09: every response biased
    return Dataset(
        cell_ids=np.array([f"C{i:02d}" for i in range(n_cells)], dtype=object),
        drug_ids=np.array([f"D{i:02d}" for i in range(n_drugs)], dtype=object),
        groups=[FeatureGroup("cell.rnaseq", CELL, [f"g{i}" for i in range(6)], feats),
                FeatureGroup("drug.descriptors", DRUG, ["a", "b", "c"], dfeats)],
        cell_index=ci.astype(np.int32), drug_index=di.astype(np.int32), label=y)


def test_response_profile_matrix_centres_by_drug():
    from hbl_mpi.analysis.baselines import response_profile_matrix

    ds = tiny_dataset()
    m = response_profile_matrix(ds)
    assert m.shape == (30, 12)
    assert np.allclose(m.mean(axis=0), 0, atol=1e-9)  # complete matrix: each drug centred
    assert m[9].mean() == pytest.approx(0.6 * 29 / 30, abs=0.02)
    part = response_profile_matrix(ds, rows=np.flatnonzero(ds.cell_index != 3))
    assert (part[3] == 0).all()  # a cell without rows has an all-missing (zero) profile


def test_isolation_forest_baselines_find_their_kind():
    from hbl_mpi.analysis.baselines import if_features, if_responses

    ds = tiny_dataset()
    f = if_features(ds, seed=0)
    r = if_responses(ds, seed=0)
    assert f.score.idxmax() == "C04" and r.score.idxmax() == "C09"
    assert f.epochs == 0 and f.seconds >= 0
    truth = pd.DataFrame({"cell": ["C09"], "kind": ["shift"]})
    assert R.detection_metrics(r.score, truth).loc[0, "auroc"] == 1.0


# ---------------------------------------------------------------------------
# K-fold out-of-fold residuals (tiny model, a few epochs: seconds)
# ---------------------------------------------------------------------------
def tiny_config(**kw):
    from hbl_mpi.core.config import RunConfig

    base = dict(data="x.h5", n=3, s=2, seed=3, model="tiny", strategy="flat:4", patience=2,
                batch_size=64, learning_rate=0.01, holdout_fraction=0.1, threads=1)
    base.update(kw)
    return RunConfig(**base)


def test_config_from_dict_reads_hdf5_attribute_types():
    from hbl_mpi.analysis.baselines import config_from_dict

    raw = tiny_config().as_dict()
    raw.update(n=np.int64(3), learning_rate=np.float64(0.01), fault_fail_nodes=np.array(["1.1"]),
               min_delta=0, unknown_key_from_a_newer_version=5)
    cfg = config_from_dict(raw)
    assert cfg.n == 3 and type(cfg.n) is int and cfg.fault_fail_nodes == ["1.1"]
    assert type(cfg.min_delta) is float and cfg.model == "tiny"


def test_cell_folds_partition_the_cells():
    from hbl_mpi.analysis.baselines import cell_folds

    folds = cell_folds(30, 4, seed=5)
    assert [len(f) for f in folds] == [7, 7, 7, 9]
    assert sorted(np.concatenate(folds).tolist()) == list(range(30))
    assert all((a == b).all() for a, b in zip(folds, cell_folds(30, 4, seed=5)))
    assert not all((a == b).all() for a, b in zip(folds, cell_folds(30, 4, seed=6)))
    with pytest.raises(ValueError):
        cell_folds(3, 4, seed=0)


@pytest.mark.timeout(120)
def test_out_of_fold_never_predicts_a_row_its_model_trained_on(monkeypatch):
    import hbl_mpi.train.trainer as T
    from hbl_mpi.analysis import baselines as B
    from hbl_mpi.tree.plan import PlanSpec, plan_for

    ds = tiny_dataset()
    cfg = tiny_config()
    seen = []
    real = T.train_node

    def spy(tables, rows, init, spec, **kw):
        seen.append((rows, spec))
        return real(tables, rows, init, spec, **kw)

    monkeypatch.setattr(T, "train_node", spy)
    oof = B.out_of_fold(ds, cfg, k=3, log=lambda *a: None)
    holdout = plan_for(ds, PlanSpec.from_config(cfg)).holdout
    assert len(seen) == 3
    for rows, spec in seen:
        fold_cells = set(rows.val_cells.tolist())
        assert not set(ds.cell_index[rows.train].tolist()) & fold_cells  # no fold cell in training
        assert set(ds.cell_index[rows.val].tolist()) <= fold_cells
        assert not holdout[rows.train].any() and not holdout[rows.val].any()
        assert holdout[rows.test].all() and len(rows.test) == holdout.sum()
        assert spec.max_epochs == 4 and spec.patience == 2 and spec.batch_size == 64 and spec.preset == "tiny"
    # every non-holdout row predicted exactly once, by the model of the fold that held it out
    assert (oof.rows == np.flatnonzero(~holdout)).all()
    assert oof.epochs == sum(f["epochs_run"] for f in oof.folds) and 3 <= oof.epochs <= 12
    assert oof.row_epochs == sum(f["epochs_run"] * f["train_rows"] for f in oof.folds)
    # the per-cell MSE is the mean squared OOF residual of the cell's rows
    resid = pd.Series((oof.prediction - ds.label[oof.rows]) ** 2, index=ds.cell_ids[ds.cell_index[oof.rows]])
    mse = resid.groupby(level=0).mean()
    assert np.allclose(oof.cell_mse.sort_index().to_numpy(), mse.sort_index().to_numpy(), rtol=1e-5)
    res = B.kfold_residuals(oof, 3)
    assert res.score.idxmax() == "C09"  # the cell whose every response is biased by +0.6
    assert res.epochs == oof.epochs and res.seconds > 0


@pytest.mark.timeout(120)
def test_run_baselines_all_scored_on_the_same_cells(tmp_path):
    from hbl_mpi.analysis import baselines as B

    ds = tiny_dataset()
    out = B.run_baselines("unused.h5", tiny_config().as_dict(), kfold=3, log=lambda *a: None, dataset=ds)
    names = [b.name for b in out]
    assert names[:3] == ["IsolationForest features", "IsolationForest responses", "K-fold OOF residual (K=3)"]
    if B.cleanlab_available():
        assert names[3] == "cleanlab outre (K=3 OOF)" and out[3].score.idxmax() == "C09"
        assert out[3].epochs == out[2].epochs and out[3].seconds >= out[2].seconds
    for b in out:
        assert set(b.score.index) == set(ds.cell_ids)
    assert out[0].epochs == 0 and out[2].epochs > 0 and out[2].row_epochs > 0


def test_cleanlab_switches_to_residual_above_the_row_limit():
    from hbl_mpi.analysis import baselines as B

    if not B.cleanlab_available():
        pytest.skip("cleanlab is not installed")
    ds = tiny_dataset()
    rows = np.arange(ds.n_rows)
    pred = ds.label.astype(np.float64) + 0.01
    pred[ds.cell_index == 9] -= 0.6  # the biased cell's labels are far from its predictions
    oof = B.OutOfFold(rows, pred, pd.Series(dtype=float), 3, 30.0, 1.0, [])
    small = B.cleanlab_scores(ds, oof, 3, max_outre_rows=10_000)
    big = B.cleanlab_scores(ds, oof, 3, max_outre_rows=100)
    assert small.detail["method"] == "outre" and big.detail["method"] == "residual"
    assert big.name == "cleanlab residual (K=3 OOF)"
    assert small.score.idxmax() == big.score.idxmax() == "C09"
    assert small.epochs == 3 and small.row_epochs == 30.0 and small.seconds >= 1.0
