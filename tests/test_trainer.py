"""The Uno model and the node trainer (docs/design.md §4), on small synthetic data with the tiny preset."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hbl_mpi.core.config import RunConfig
from hbl_mpi.run.context import RunContext
from hbl_mpi.data import synthesize
from hbl_mpi.tree.plan import NodeRows
from hbl_mpi.train.flat_state import TrainState
from hbl_mpi.train.trainer import (EpochEnd, NonFiniteLoss, ResumePoint, TrainSpec, derive_seed, epoch_order,
                             mean_loss, train_node)
from hbl_mpi.uno import InputSpec, build_model, initial_state, layer_table, n_parameters


@pytest.fixture(scope="module")
def ctx():
    torch.set_num_threads(1)
    ds = synthesize("small", seed=11, cells=48, drugs=16, cell_features=24, descriptors=16, fingerprints=8)
    cfg = RunConfig(data="mem", n=3, s=2, seed=4, model="tiny", batch_size=64, learning_rate=3e-3,
                    strategy="flat:6", patience=3)
    return RunContext.build(cfg, ds)


def spec(ctx, node, **kw):
    s = ctx.spec_for(node)
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def test_paper_preset_matches_candle_top21_parameter_count():
    # CANDLE's uno_auc_model.txt on Top21 (942 expression, 5,270 descriptor columns)
    model = build_model(InputSpec((("cell.rnaseq", 942), ("drug.descriptors", 5270))), "paper")
    assert n_parameters(model) == 16_224_001
    rows = layer_table(model)
    assert sum(r["params"] for r in rows) == 16_224_001
    assert [r["out"] for r in rows if r["block"] == "top"] == [1000] * 5


def test_model_reads_every_group_and_the_dose():
    spec_ = InputSpec((("a", 5), ("b", 3)), has_dose=True)
    model = build_model(spec_, "tiny")
    out = model(torch.randn(7, 5), torch.randn(7, 3), torch.randn(7))
    assert out.shape == (7,)
    assert layer_table(model)[-2]["in"] == 16 + 16 + 1  # two encodings and the dose feed the top


def test_initial_state_is_a_pure_function_of_the_seed(ctx):
    a = initial_state(ctx.dataset, "tiny", 3, 1e-3)
    torch.manual_seed(999)  # the caller's RNG must not matter
    b = initial_state(ctx.dataset, "tiny", 3, 1e-3)
    c = initial_state(ctx.dataset, "tiny", 4, 1e-3)
    assert a.checksum() == b.checksum() != c.checksum()
    assert a.step == 0 and a.flat[a.n_params:].abs().sum() == 0  # Adam moments start at zero


def test_training_lowers_the_loss(ctx):
    ts = ctx.new_train_state()
    init = ctx.initial_state()
    rows = ctx.plan.rows("1.1")
    ts.load(init)
    before = mean_loss(ts, ctx.tables, rows.val)
    out = train_node(ctx.tables, rows, init, spec(ctx, "1.1"), train_state=ts)
    assert out.val_loss < 0.5 * before
    assert out.history[-1].loss < out.history[0].loss
    assert out.steps == out.epochs_run * math.ceil(len(rows.train) / 64)
    cells, n_rows, mse = out.cell_val
    assert set(cells) == set(rows.val_cells) and n_rows.sum() == len(rows.val)
    # the per-cell errors are the val loss split by cell
    assert np.nansum(mse * n_rows) / n_rows.sum() == pytest.approx(
        out.val_loss if out.best_epoch else out.val_loss_last, rel=1e-5)


def test_cell_test_splits_the_holdout_loss_by_cell(ctx):
    ts = ctx.new_train_state()
    rows = ctx.plan.rows("1.2")
    out = train_node(ctx.tables, rows, ctx.initial_state(), spec(ctx, "1.2"), train_state=ts)
    cells, n_rows, mse = out.cell_test
    holdout_cells = np.unique(ctx.dataset.cell_index[rows.test])
    assert list(cells) == list(holdout_cells) and n_rows.sum() == len(rows.test)
    assert (n_rows > 0).all() and np.isfinite(mse).all()
    # trained and validated cells alike are scored on rows no node trains on
    assert set(rows.val_cells) & set(cells) and set(rows.train_cells) & set(cells)
    assert np.sum(mse * n_rows) / n_rows.sum() == pytest.approx(out.test_loss, rel=1e-9)


def test_same_seed_same_state_and_start_independent_of_history(ctx):
    ts = ctx.new_train_state()
    a = ctx.train("1.2", ctx.initial_state(), ts)
    ctx.train("1.1", ctx.initial_state(), ts)  # the rank did other work in between
    b = ctx.train("1.2", ctx.initial_state(), ctx.new_train_state())
    assert a.inherit_state.checksum() == b.inherit_state.checksum()
    assert [h.val_loss for h in a.history] == [h.val_loss for h in b.history]
    assert derive_seed(4, "1.2", 1) != derive_seed(4, "1.2", 2) != derive_seed(5, "1.2", 2)


def test_node_batch_order_is_the_nodes_own_seeded_shuffle():
    rows = np.array([3, 5, 8, 13, 21, 34, 55], dtype=np.int64)
    sp = TrainSpec(node="1.2.3", stage=2, max_epochs=1, seed=9)
    es, order = epoch_order(rows, 100, sp, 2)
    assert es == derive_seed(9, "1.2.3", 2)
    assert np.array_equal(order, rows[np.random.default_rng(es).permutation(len(rows))])


def test_family_batch_order_walks_the_shared_rows_of_siblings_in_one_order():
    n = 400
    rng = np.random.default_rng(0)
    groups = np.array_split(rng.permutation(n), 4)  # the 4 siblings' held-out rows
    orders = []
    for k in range(4):
        train = np.sort(np.setdiff1d(np.arange(n), groups[k]))
        sp = TrainSpec(node=f"1.3.{k + 1}", stage=2, max_epochs=1, seed=9, batch_order="family")
        es, order = epoch_order(train, n, sp, 1)
        assert sorted(order.tolist()) == train.tolist()  # every training row once
        assert es == epoch_order(train, n, TrainSpec(node="1.3.9", stage=2, max_epochs=1, seed=9,
                                                     batch_order="family"), 1)[0]  # one seed per family
        orders.append(order)
    shared = np.intersect1d(np.setdiff1d(np.arange(n), groups[0]), np.setdiff1d(np.arange(n), groups[1]))
    a = orders[0][np.isin(orders[0], shared)]
    b = orders[1][np.isin(orders[1], shared)]
    assert np.array_equal(a, b)  # common random numbers: the shared rows in the same order
    other = epoch_order(np.arange(n), n, TrainSpec(node="1.4.1", stage=2, max_epochs=1, seed=9,
                                                   batch_order="family"), 1)[1]
    assert not np.array_equal(other[np.isin(other, shared)], a)  # another family shuffles otherwise
    again = epoch_order(np.arange(n), n, TrainSpec(node="1.3.1", stage=2, max_epochs=1, seed=9,
                                                   batch_order="family"), 2)[1]
    assert not np.array_equal(again[np.isin(again, shared)], a)  # and every epoch anew


def test_family_batch_order_makes_siblings_on_the_same_rows_identical(ctx):
    """Two siblings given the same rows differ only by their luck under `node`, not at all under `family`."""
    rows = ctx.plan.rows("1.1")
    parent = ctx.train("1.1", ctx.initial_state(), ctx.new_train_state()).inherit_state
    out = {}
    for order in ("node", "family"):
        runs = [train_node(ctx.tables, rows, parent, spec(ctx, f"1.1.{k}", batch_order=order),
                           train_state=ctx.new_train_state()) for k in (1, 2)]
        out[order] = [r.inherit_state.checksum() for r in runs]
    assert out["node"][0] != out["node"][1]
    assert out["family"][0] == out["family"][1]


def test_warm_started_child_begins_below_a_fresh_model(ctx):
    ts = ctx.new_train_state()
    parent = ctx.train("1.1", ctx.initial_state(), ts)
    child = ctx.train("1.1.1", parent.inherit_state, ts)
    fresh = ctx.train("1.1.1", ctx.initial_state(), ts)
    assert child.start_checksum == parent.inherit_state.checksum()
    assert child.history[0].val_loss < fresh.history[0].val_loss
    assert child.history[0].loss < fresh.history[0].loss


def test_early_stopping_after_patience_epochs_without_improvement(ctx, monkeypatch):
    import hbl_mpi.train.trainer as T

    # val_loss improves for 2 epochs then never again: stop after epoch 2 + patience 3 = 5
    script = iter([1.0, 0.5, 0.6, 0.7, 0.55, 0.4, 0.3, 0.2, 0.1, 0.05])
    real = T.mean_loss

    def scripted(ts, tables, rows, group=None):
        if rows is current["val"]:
            return next(script)
        return real(ts, tables, rows, group)

    current = {}
    monkeypatch.setattr(T, "mean_loss", scripted)
    rows = ctx.plan.rows("1.3")
    current["val"] = rows.val
    out = train_node(ctx.tables, rows, ctx.initial_state(), spec(ctx, "1.3", max_epochs=10, patience=3),
                     train_state=ctx.new_train_state())
    assert out.epochs_run == 5 and out.stopped_early and out.best_epoch == 2 and out.val_loss == 0.5
    assert out.val_loss_last == 0.55


def test_inherit_best_or_last(ctx):
    ts = ctx.new_train_state()
    best = train_node(ctx.tables, ctx.plan.rows("1.1"), ctx.initial_state(),
                      spec(ctx, "1.1", inherit="best", max_epochs=8), train_state=ts)
    last = train_node(ctx.tables, ctx.plan.rows("1.1"), ctx.initial_state(),
                      spec(ctx, "1.1", inherit="last", max_epochs=8), train_state=ts)
    assert [h.val_loss for h in best.history] == [h.val_loss for h in last.history]
    assert last.inherit_state.step == last.epochs_run * (best.steps // best.epochs_run)
    assert best.inherit_state.step == best.best_epoch * (best.steps // best.epochs_run)
    if best.best_epoch != best.epochs_run:
        assert best.inherit_state.checksum() != last.inherit_state.checksum()


def test_resume_at_an_epoch_boundary_is_bit_identical(ctx):
    seen: list[EpochEnd] = []
    saved = {}

    def hook(e: EpochEnd):
        seen.append(e.epoch)
        if e.epoch == 3:
            saved["point"] = ResumePoint(e.epoch, list(e.history), e.best_epoch, e.best_val, e.wait,
                                         e.state(), type(e.best)(e.best.flat.clone(), e.best.n_params, e.best.step))

    full = train_node(ctx.tables, ctx.plan.rows("1.2"), ctx.initial_state(), spec(ctx, "1.2", max_epochs=6, patience=10),
                      train_state=ctx.new_train_state(), on_epoch=hook)
    assert seen == list(range(1, full.epochs_run + 1))
    resumed = train_node(ctx.tables, ctx.plan.rows("1.2"), ctx.initial_state(),
                         spec(ctx, "1.2", max_epochs=6, patience=10), train_state=ctx.new_train_state(),
                         resume=saved["point"])
    assert [h.val_loss for h in resumed.history] == [h.val_loss for h in full.history]
    assert resumed.inherit_state.checksum() == full.inherit_state.checksum()
    assert resumed.start_checksum == full.start_checksum


def test_nan_loss_raises(ctx):
    with pytest.raises(NonFiniteLoss, match="1.1"):
        train_node(ctx.tables, ctx.plan.rows("1.1"), ctx.initial_state(), spec(ctx, "1.1", inject_nan=True),
                   train_state=ctx.new_train_state())


def test_node_without_validation_rows_fails_clearly(ctx):
    rows = ctx.plan.rows("1.1")
    empty = NodeRows(rows.train, rows.val[:0], rows.test, rows.val_cells, rows.train_cells)
    with pytest.raises(RuntimeError, match="no validation rows"):
        train_node(ctx.tables, empty, ctx.initial_state(), spec(ctx, "1.1"), train_state=ctx.new_train_state())


def test_batches_are_gathered_from_normalised_tables(ctx):
    t = ctx.tables
    rows = np.array([0, 5, 17, 3])
    xs, y = t.gather(t.index(rows))
    ds = ctx.dataset
    for g, x in zip(ds.groups, xs):
        ent = ds.cell_index if g.entity == "cell" else ds.drug_index
        np.testing.assert_array_equal(x.numpy(), g.values[ent[rows]])
    np.testing.assert_array_equal(y.numpy(), ds.label[rows])
    assert t.nbytes < ds.duplicated_nbytes()


def test_train_state_fork_buffer_holds_weights_and_adam(ctx):
    ts = ctx.new_train_state()
    assert isinstance(ts, TrainState) and ts.flat.numel() == 3 * ts.n_params
    out = ctx.train("1.1", ctx.initial_state(), ts)
    P = out.inherit_state.n_params
    assert out.inherit_state.flat[P:].abs().sum() > 0  # the moments travel with the weights


def test_pair_predictions_cover_every_drug_of_the_validation_cells(ctx):
    from hbl_mpi.train.trainer import pair_predictions, squared_errors

    ts = ctx.new_train_state()
    rows = ctx.plan.rows("1.2")
    out = train_node(ctx.tables, rows, ctx.initial_state(), spec(ctx, "1.2", max_epochs=2), train_state=ts)
    cells, drugs, pred, label = out.cell_pred
    n_d = ctx.dataset.n_drugs
    assert len(cells) == len(rows.val_cells) * n_d and set(cells) == set(rows.val_cells)
    assert sorted(set(drugs)) == list(range(n_d))
    # the measured pairs: the label is the validation row's, and the prediction reproduces
    # the trainer's own squared error on that row
    ts.load(out.inherit_state)
    sq = squared_errors(ts, ctx.tables, rows.val).cpu().numpy()
    key = {(c, d): i for i, (c, d) in enumerate(zip(cells, drugs))}
    ds = ctx.dataset
    for j, r in enumerate(rows.val[:50]):
        i = key[(ds.cell_index[r], ds.drug_index[r])]
        assert label[i] == pytest.approx(ds.label[r])
        assert (pred[i] - label[i]) ** 2 == pytest.approx(sq[j], rel=1e-4, abs=1e-7)
    measured = {(ds.cell_index[r], ds.drug_index[r]) for r in rows.val}
    assert np.isfinite(label).sum() == len(measured)
