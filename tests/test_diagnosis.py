"""The cell diagnosis (hbl_mpi/diagnosis.py) on grids built to have each answer.

A clean world: y[c, d] = level_c + potency_d + <u_c, v_d> + noise, and the held-out model
predicts the noise-free part from each cell's own (stored) expression. Then one cell per
kind is corrupted the way its name says:

* label_noise: its labels are replaced by random labels of other cells (any drug);
* shift: its labels move by +0.25 on every drug;
* swap: two cells' stored expression profiles are exchanged, so each one's predictions are
  those of the other (labels stay);
* distinct: a cluster of expression neighbours shares a response pattern the model lacks.
"""

import numpy as np
import pandas as pd
import pytest

from hbl_mpi.analysis import diagnosis as D

C, K, NDRUG = 120, 4, 60


def world(seed=0):
    rng = np.random.default_rng(seed)
    cluster = np.arange(C) % 12
    centres = rng.normal(size=(12, K))
    u = centres[cluster] + 0.4 * rng.normal(size=(C, K))
    v = rng.normal(size=(NDRUG, K)) * 0.05
    level = 0.05 * rng.normal(size=C)
    potency = 0.15 * rng.normal(size=NDRUG)
    f = 0.6 + level[:, None] + potency[None, :] + u @ v.T  # what the expression predicts
    y = f + 0.02 * rng.normal(size=f.shape)
    pred = f + 0.01 * rng.normal(size=f.shape)
    measured = rng.random(f.shape) < 0.85
    return rng, cluster, f, y, pred, measured


def neighbours_of(cluster, k=6):
    rows = []
    for c in range(C):
        mates = [m for m in np.flatnonzero(cluster == cluster[c]) if m != c][:k]
        rows += [{"cell": f"c{c:03d}", "neighbour": f"c{m:03d}", "rank": i + 1, "similarity": 0.9}
                 for i, m in enumerate(mates)]
    return pd.DataFrame(rows)


def build(plant=True, seed=0):
    rng, cluster, f, y, pred, measured = world(seed)
    planted = {}
    if plant:
        # label noise: other cells' labels, any drug
        y[3] = rng.choice(y[10:].ravel(), size=NDRUG)
        planted["c003"] = "label_noise"
        # shift
        y[7] += 0.25
        planted["c007"] = "shift"
        # swap: cells 20 and 45 (different clusters) carry each other's expression
        pred[[20, 45]] = pred[[45, 20]]
        planted["c020"] = planted["c045"] = "swap"
        # distinct biology: the whole of cluster 5 shares a pattern the model has not learned
        pattern = 0.15 * rng.normal(size=NDRUG)
        for c in np.flatnonzero(cluster == 5):
            y[c] += pattern
            planted[f"c{c:03d}"] = "distinct"
    label = np.where(measured, y, np.nan)
    cells = np.array([f"c{i:03d}" for i in range(C)], dtype=object)
    drugs = np.array([f"d{j:02d}" for j in range(NDRUG)], dtype=object)
    grid = D.Grid(cells, drugs, pred, label, np.array(["1.1.1"] * C, dtype=object), np.full(C, 3))
    mse = np.nanmean((label - pred) ** 2, axis=1)
    score = np.log(mse / np.median(mse))
    ranking = pd.DataFrame({"cell": cells, "score": score})
    ranking["rank"] = ranking["score"].rank(ascending=False, method="first").astype(int)
    return grid, ranking, neighbours_of(cluster), planted


@pytest.fixture(scope="module")
def diagnosed():
    grid, ranking, nb, planted = build()
    return D.diagnose(grid, ranking, nb, seed=1).set_index("cell"), planted


def test_each_planted_kind_is_named(diagnosed):
    d, planted = diagnosed
    assert d.loc["c003", "diagnosis"] == "label_noise"
    assert d.loc["c007", "diagnosis"] == "shift"
    assert d.loc["c020", "diagnosis"] == "swap"
    assert d.loc["c045", "diagnosis"] == "swap"
    distinct = [c for c, k in planted.items() if k == "distinct"]
    named = (d.loc[distinct, "diagnosis"] == "distinct").mean()
    assert named >= 0.8, d.loc[distinct, ["diagnosis", "neighbour_coherence", "flagged"]]


def test_swap_names_the_partner(diagnosed):
    d, _ = diagnosed
    assert d.loc["c020", "likely_identity"] == "c045"
    assert d.loc["c045", "likely_identity"] == "c020"
    assert d.loc["c003", "likely_identity"] == ""  # only swaps name an identity


def test_clean_cells_are_not_called_errors(diagnosed):
    d, planted = diagnosed
    clean = d.loc[[c for c in d.index if c not in planted]]
    assert (clean["diagnosis"].isin(D.ERROR_KINDS)).mean() < 0.05


def test_evidence_columns_say_why(diagnosed):
    d, _ = diagnosed
    # the shift: a constant explains most of its error, large t
    assert d.loc["c007", "bias_share"] > 0.8 and d.loc["c007", "bias_t"] > 10
    # label noise: responses unrelated to the predictions, residuals anti-correlated with them
    assert abs(d.loc["c003", "response_pred_corr"]) < 0.4 and d.loc["c003", "resid_pred_corr"] < -0.4
    # the swap: the partner fits far better than the cell's own predictions
    assert d.loc["c020", "identity_gain"] > 2
    # distinct biology: neighbours err the same way; clean cells do not
    assert d.loc["c017", "neighbour_coherence"] > 0.5  # cluster 5
    assert abs(d.loc["c001", "neighbour_coherence"]) < 0.3
    for c in ("c003", "c007", "c020"):
        assert 0 <= d.loc[c, "confidence"] <= 1


def test_a_clean_world_has_no_diagnosis():
    grid, ranking, nb, _ = build(plant=False)
    d = D.diagnose(grid, ranking, nb, seed=0)
    assert not d["diagnosis"].isin(D.ERROR_KINDS).any()


def test_prediction_grid_takes_the_deepest_node():
    cp = pd.DataFrame({"node": ["1", "1", "1.2", "1.2", "1.2", "1.2"], "cell": ["a", "a", "a", "a", "b", "b"],
                       "drug": ["x", "y", "x", "y", "x", "y"], "pred": [9, 9, 1, 2, 3, 4],
                       "label": [1.0, np.nan, 1.0, np.nan, 0.5, 0.6]})
    g = D.prediction_grid(cp)
    assert list(g.cells) == ["a", "b"] and list(g.node) == ["1.2", "1.2"]
    np.testing.assert_allclose(g.pred, [[1, 2], [3, 4]])
    assert np.isnan(g.label[0, 1]) and g.measured.sum() == 3


def test_expression_neighbours():
    from hbl_mpi.data.dataset import CELL, DRUG, Dataset, FeatureGroup

    rng = np.random.default_rng(0)
    base = rng.normal(size=(2, 30))
    x = np.vstack([base[0] + 0.1 * rng.normal(size=(3, 30)), base[1] + 0.1 * rng.normal(size=(3, 30))])
    ds = Dataset(np.array(list("abcdef"), dtype=object), np.array(["d"], dtype=object),
                 [FeatureGroup("cell.rnaseq", CELL, [f"g{i}" for i in range(30)], x.astype(np.float32)),
                  FeatureGroup("drug.descriptors", DRUG, ["z"], np.zeros((1, 1), np.float32))],
                 np.arange(6, dtype=np.int32), np.zeros(6, np.int32), np.zeros(6, np.float32))
    nb = D.expression_neighbours(ds, k=2)
    first = nb[nb["rank"] == 1].set_index("cell")["neighbour"]
    assert all(first[c] in "abc" for c in "abc") and all(first[c] in "def" for c in "def")
    assert (nb["cell"] != nb["neighbour"]).all()


def test_cross_screen_agreement():
    rng = np.random.default_rng(3)
    cells, drugs = [f"c{i}" for i in range(30)], [f"d{j}" for j in range(20)]
    prof = rng.normal(size=(30, 20)) * 0.1
    pot = rng.normal(size=20)
    this = pd.DataFrame([(c, d, 0.5 + pot[j] + prof[i, j]) for i, c in enumerate(cells) for j, d in enumerate(drugs)],
                        columns=["cell", "drug", "label"])
    ref = this.copy()
    # the reference has other drug scales (a constant per drug) and one cell measured as noise
    ref["label"] = ref["label"] + ref["drug"].map({d: 0.3 * j for j, d in enumerate(drugs)})
    bad = ref["cell"] == "c5"
    ref.loc[bad, "label"] = ref.loc[bad, "label"].sample(frac=1, random_state=0).to_numpy()
    xs = D.cross_screen(this, ref).set_index("cell")
    assert xs.loc["c0", "screen_agreement"] > 0.99
    assert xs.loc["c5", "screen_agreement"] < 0.5
    assert (xs["shared_drugs"] == 20).all()
    # a score that flags c5 correlates positively with disagreement
    score = pd.Series(np.where(np.array(cells) == "c5", 5.0, 0.0) + rng.normal(size=30) * 0.01, index=cells)
    corr = D.score_disagreement_correlation({"s": score}, xs.reset_index())
    assert corr.loc[0, "cells"] == 30 and corr.loc[0, "spearman"] > 0


def test_reference_turns_a_reproducible_error_into_biology():
    grid, ranking, nb, _ = build()
    ref = pd.DataFrame({"cell": ["c007"], "screen_agreement": [0.9], "model_this_corr": [0.8],
                        "model_ref_corr": [0.7]})
    d = D.diagnose(grid, ranking, nb, reference=ref, seed=0).set_index("cell")
    assert d.loc["c007", "diagnosis"] == "distinct"  # the other screen reproduces the offset profile
