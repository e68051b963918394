"""Baselines for finding anomalous cells, scored by the same metrics as the HBL ranking.

* **Isolation Forest on per-cell features** (scikit-learn): looks only at the cell's
  expression profile. It can flag a cell whose features are unusual, but a label problem
  (noise, a bias) or a swapped-but-realistic profile leaves the features ordinary.
* **Isolation Forest on per-cell response profiles**: the cell's responses across drugs,
  centred by each drug's mean (so the profile says how the cell differs from a typical
  cell on the same drugs). Sees label problems, cannot see a wrong expression profile.
* **K-fold out-of-fold residuals** of the same Uno model: cells split into K folds; for
  each fold a model is trained (same preset, optimiser, batch size, early stopping with
  the held-out fold as validation, as every HBL node does) on the other folds, and each
  held-out cell is scored by its MSE. This is the tree's stage 1 with N = K, repeated
  alone; the comparison with HBL shows what the deeper stages add.
* **cleanlab** (optional, when installed): ``cleanlab.regression.rank``'s label quality
  of each row from the same out-of-fold predictions, averaged per cell.

Every baseline returns a ``BaselineResult`` (cell -> score, higher = more suspicious)
with the compute it spent: training epochs, row-epochs (epochs x training rows) and
seconds. All of them use the rows the HBL run used: the plan's holdout test rows are
excluded everywhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from hbl_mpi.core.seeding import generator
from hbl_mpi.data import load_dataset
from hbl_mpi.data.dataset import Dataset, cell_feature_matrix
from hbl_mpi.train.device import resolve_device


@dataclass
class BaselineResult:
    """One baseline's cell scores and cost."""

    name: str
    score: pd.Series  # index: cell id (str); higher = more suspicious
    epochs: int = 0
    row_epochs: float = 0.0
    seconds: float = 0.0
    detail: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------
# per-cell matrices
# ---------------------------------------------------------------------------
def response_profile_matrix(ds: Dataset, rows: np.ndarray | None = None) -> np.ndarray:
    """(cells, drugs): the cell's mean label per drug minus the drug's mean label; 0 where missing.

    ``rows`` restricts the responses used (default: all). With doses, the rows of one
    (cell, drug) are averaged.
    """
    rows = np.arange(ds.n_rows) if rows is None else np.asarray(rows)
    c = ds.cell_index[rows].astype(np.int64)
    d = ds.drug_index[rows].astype(np.int64)
    y = ds.label[rows].astype(np.float64)
    shape = (ds.n_cells, ds.n_drugs)
    total = np.zeros(shape)
    count = np.zeros(shape)
    np.add.at(total, (c, d), y)
    np.add.at(count, (c, d), 1.0)
    seen = count > 0
    mean = np.divide(total, count, out=np.zeros(shape), where=seen)
    drug_total = total.sum(axis=0)
    drug_count = count.sum(axis=0)
    drug_mean = np.divide(drug_total, drug_count, out=np.zeros(ds.n_drugs), where=drug_count > 0)
    return np.where(seen, mean - drug_mean[None, :], 0.0)


def isolation_forest_scores(x: np.ndarray, seed: int = 0, n_estimators: int = 300) -> np.ndarray:
    """Anomaly score per row of ``x`` (higher = more isolated), scikit-learn's IsolationForest."""
    from sklearn.ensemble import IsolationForest

    if x.shape[1] == 0:
        return np.zeros(len(x))
    forest = IsolationForest(n_estimators=n_estimators, random_state=seed)
    forest.fit(x)
    return -forest.score_samples(x)


def if_features(ds: Dataset, seed: int = 0) -> BaselineResult:
    t0 = time.perf_counter()
    s = isolation_forest_scores(cell_feature_matrix(ds), seed)
    return BaselineResult("IsolationForest features", pd.Series(s, index=ds.cell_ids.astype(str)),
                          seconds=time.perf_counter() - t0)


def if_responses(ds: Dataset, rows: np.ndarray | None = None, seed: int = 0) -> BaselineResult:
    t0 = time.perf_counter()
    s = isolation_forest_scores(response_profile_matrix(ds, rows), seed)
    return BaselineResult("IsolationForest responses", pd.Series(s, index=ds.cell_ids.astype(str)),
                          seconds=time.perf_counter() - t0)


# ---------------------------------------------------------------------------
# K-fold out-of-fold residuals of the same Uno model
# ---------------------------------------------------------------------------
def config_from_dict(raw: dict):
    """A ``RunConfig`` from a results file's recorded config (unknown keys ignored).

    HDF5 attributes may hand back numpy scalars and arrays; they are turned into the
    plain Python types the config declares, so ``RunConfig`` behaves as in the run.
    """
    import dataclasses

    from hbl_mpi.core.config import RunConfig

    out = {}
    types = {f.name: type(getattr(RunConfig(), f.name)) for f in dataclasses.fields(RunConfig)}
    for key, value in (raw or {}).items():
        if key not in types:
            continue
        if isinstance(value, np.generic):
            value = value.item()
        if types[key] is list:
            value = [str(v) for v in (value.tolist() if isinstance(value, np.ndarray) else list(value or []))]
        elif types[key] is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        out[key] = value
    return RunConfig(**out)


def cell_folds(n_cells: int, k: int, seed: int) -> list[np.ndarray]:
    """Cells in a seeded random order cut into ``k`` consecutive parts (the plan's ``cut`` rule)."""
    from hbl_mpi.tree.plan import cut

    if not 2 <= k <= n_cells:
        raise ValueError(f"K-fold needs 2 <= K <= cells ({n_cells}); got K = {k}")
    order = generator(seed, 0x6B666F6C64).permutation(n_cells)  # "kfold": its own stream
    return [np.sort(order[a:b]) for a, b in cut(0, n_cells, k)]


def _predictions(ts, tables, rows: np.ndarray) -> np.ndarray:
    """The current state's predictions (eval mode) for ``rows``."""
    from hbl_mpi.train.trainer import evaluate_rows

    return evaluate_rows(ts, tables, rows, lambda pred, y: pred.double()).cpu().numpy()


@dataclass
class OutOfFold:
    """What the K models of the residual baseline produced (shared by the OOF scorers)."""

    rows: np.ndarray  # response rows predicted (every non-holdout row of a scored cell)
    prediction: np.ndarray  # out-of-fold prediction of each row
    cell_mse: pd.Series  # per-cell MSE of the out-of-fold predictions
    epochs: int
    row_epochs: float
    seconds: float
    folds: list[dict]


def out_of_fold(ds: Dataset, cfg, k: int = 5, log=print, fold_seed: int | None = None) -> OutOfFold:
    """Train K models of the run's Uno (preset, optimiser, batch, seed, early stopping) by cell fold.

    Fold f's model trains on the other folds' rows and stops early on fold f's rows,
    exactly as a stage-1 HBL node with N = K would (same initial state, epoch budget of
    stage 1, patience); the plan's holdout rows are excluded everywhere and serve as
    each model's test set. Each fold's rows are then predicted by the model that never
    saw them (the inherited state: best or last epoch, as the run's ``inherit``).
    ``fold_seed`` (default: the run's seed) draws another cut into folds: repeated K-fold.
    """
    from hbl_mpi.tree.plan import NodeRows, PlanSpec, plan_for
    from hbl_mpi.train.device_tables import DeviceTables
    from hbl_mpi.train.trainer import TrainSpec, train_node
    from hbl_mpi.train.flat_state import TrainState
    from hbl_mpi.uno import build_model, initial_state

    t0 = time.perf_counter()
    plan = plan_for(ds, PlanSpec.from_config(cfg))
    keep = ~plan.holdout
    test = np.flatnonzero(plan.holdout).astype(np.int64)
    cell_of_row = np.asarray(ds.cell_index, dtype=np.int64)
    device = resolve_device(cfg.device)
    tables = DeviceTables.from_dataset(ds, device)
    dropout = cfg.resolved_dropout()
    init = initial_state(ds, cfg.model, cfg.seed, cfg.learning_rate, dropout).to(device)
    ts = TrainState(build_model(ds, cfg.model, dropout), cfg.learning_rate, device)
    budget = cfg.epoch_strategy.budget(1, cfg.s)
    all_rows, all_pred, folds = [], [], []
    mse_parts = []
    epochs = 0
    row_epochs = 0.0
    tag = f"kfold{k}" if fold_seed is None else f"kfold{k}r{fold_seed}"
    for f, cells in enumerate(cell_folds(ds.n_cells, k, cfg.seed if fold_seed is None else fold_seed), start=1):
        in_fold = np.isin(cell_of_row, cells)
        val = np.flatnonzero(keep & in_fold).astype(np.int64)
        train = np.flatnonzero(keep & ~in_fold).astype(np.int64)
        if len(val) == 0:
            continue  # every row of these cells is in the holdout: nothing to score
        rows = NodeRows(train=train, val=val, test=test, val_cells=cells.astype(np.int64),
                        train_cells=np.setdiff1d(np.arange(ds.n_cells), cells).astype(np.int64))
        spec = TrainSpec(node=f"{tag}.{f}", stage=1, max_epochs=budget, patience=cfg.patience,
                         min_delta=cfg.min_delta, batch_size=cfg.batch_size, seed=cfg.seed,
                         inherit=cfg.inherit, preset=cfg.model, learning_rate=cfg.learning_rate,
                         dropout=dropout, device=str(device))
        o = train_node(tables, rows, init, spec, train_state=ts)
        # train_node leaves the inherited state loaded: predict the fold with it
        all_rows.append(val)
        all_pred.append(_predictions(ts, tables, val))
        c, n, m = o.cell_val
        mse_parts.append(pd.Series(m, index=ds.cell_ids[c].astype(str))[n > 0])
        epochs += o.epochs_run
        row_epochs += o.epochs_run * o.n_train_rows
        folds.append({"fold": f, "cells": len(cells), "train_rows": len(train), "val_rows": len(val),
                      "epochs_run": o.epochs_run, "val_loss": o.val_loss, "test_loss": o.test_loss,
                      "seconds": o.train_s})
        log(f"[hbl_mpi] K-fold baseline: fold {f}/{k} {o.epochs_run} epochs, val_loss {o.val_loss:.4g}, "
            f"{o.train_s:.1f} s")
    rows = np.concatenate(all_rows) if all_rows else np.zeros(0, dtype=np.int64)
    pred = np.concatenate(all_pred) if all_pred else np.zeros(0)
    order = np.argsort(rows, kind="stable")
    return OutOfFold(rows[order], pred[order], pd.concat(mse_parts) if mse_parts else pd.Series(dtype=float),
                     epochs, row_epochs, time.perf_counter() - t0, folds)


def kfold_residuals(oof: OutOfFold, k: int) -> BaselineResult:
    """Per-cell mean squared out-of-fold residual (higher = the model of the other cells fits it worse)."""
    return BaselineResult(f"K-fold OOF residual (K={k})", oof.cell_mse.copy(), epochs=oof.epochs,
                          row_epochs=oof.row_epochs, seconds=oof.seconds, detail={"folds": oof.folds})


def cleanlab_available() -> bool:
    try:
        import cleanlab.regression.rank  # noqa: F401
    except Exception:  # not installed, or broken: the baseline is optional
        return False
    return True


CLEANLAB_OUTRE_MAX_ROWS = 40_000
"""cleanlab's default ``outre`` score grows ~quadratically with the rows (measured: 5,000 rows
7 s, 17,000 rows 75 s on this 2-core machine); above this many rows the ``residual`` score
is used instead, and the baseline's name says which."""


def cleanlab_scores(ds: Dataset, oof: OutOfFold, k: int, max_outre_rows: int = CLEANLAB_OUTRE_MAX_ROWS
                    ) -> BaselineResult:
    """cleanlab's regression label quality of each row (from the OOF predictions), per cell.

    Score = 1 - mean label quality of the cell's rows (quality is in [0, 1], 1 = clean).
    No extra training: it reuses the K-fold models' predictions, so its compute is theirs
    plus the scoring time.
    """
    from cleanlab.regression.rank import get_label_quality_scores

    t0 = time.perf_counter()
    method = "outre" if len(oof.rows) <= max_outre_rows else "residual"
    y = ds.label[oof.rows].astype(np.float64)
    q = get_label_quality_scores(y, oof.prediction, method=method)
    cells = ds.cell_ids[np.asarray(ds.cell_index)[oof.rows]].astype(str)
    score = 1.0 - pd.Series(q, index=cells).groupby(level=0).mean()
    return BaselineResult(f"cleanlab {method} (K={k} OOF)", score, epochs=oof.epochs,
                          row_epochs=oof.row_epochs, seconds=oof.seconds + time.perf_counter() - t0,
                          detail={"method": method})


def run_baselines(data_path: str, config: dict, kfold: int = 5, log=print,
                  dataset: Dataset | None = None) -> list[BaselineResult]:
    """Every baseline on the run's data, with the run's settings (``config`` = results' attrs).

    Isolation Forest on cell features, on response profiles (non-holdout rows), the K-fold
    out-of-fold residuals, and cleanlab on those residuals when cleanlab is installed.
    """
    import torch

    from hbl_mpi.tree.plan import PlanSpec, plan_for

    cfg = config_from_dict(config)
    ds = dataset if dataset is not None else load_dataset(data_path)
    keep_rows = np.flatnonzero(~plan_for(ds, PlanSpec.from_config(cfg)).holdout)
    out = [if_features(ds, seed=cfg.seed), if_responses(ds, keep_rows, seed=cfg.seed)]
    threads = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        oof = out_of_fold(ds, cfg, kfold, log=log)
    finally:
        torch.set_num_threads(threads)
    out.append(kfold_residuals(oof, kfold))
    if cleanlab_available():
        out.append(cleanlab_scores(ds, oof, kfold))
    else:
        log("[hbl_mpi] cleanlab is not installed: its baseline is left out")
    return out
