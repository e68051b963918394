"""Training one plan node: epochs, early stopping, best/last state, per-cell validation error.

Determinism: every epoch's randomness (the shuffle and the dropout masks) is seeded from
(plan seed, node name, epoch) alone — or, with ``batch_order = "family"``, from (plan seed,
parent name, epoch), shared by the siblings (``epoch_order``) — so a node's result depends
only on its inputs and not on which rank trains it, what that rank did before, or whether
the node was resumed from a checkpoint at an epoch boundary. With the same torch thread
count, CPU results are bit-identical across the serial driver and any MPI schedule.

Data parallel (a rank group): every rank of the group walks the same shuffled order;
each takes a strided shard of each global batch, computes ``sum(sq. error) / global
batch rows`` and the gradients are summed over the group by bucketed non-blocking
reductions that overlap backward (``grad_sync.GradSync.step``) — the same gradient as one
rank on the whole batch, up to float reassociation. On the CPU each rank then runs Adam
on its share of the buffer and the weights are allgathered (``Reduction.SHARDED``); the
moments are made whole at every epoch end, before the state is read.
Evaluation shards rows the same way and sums squared errors.

Non-finite losses raise ``NonFiniteLoss``; every rank of a group sees the same reduced
epoch loss, so they all raise together (no rank is left waiting in a collective).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch

from hbl_mpi.core.seeding import derive_seed, generator
from hbl_mpi.tree.plan import NodeRows, parent_of
from hbl_mpi.train.flat_state import ModelState, TrainState, clone_flat
from hbl_mpi.train.device_tables import DeviceTables

EVAL_CHUNK = 16384


class NonFiniteLoss(RuntimeError):
    """The training or validation loss became NaN or infinite."""


class Group(Protocol):
    size: int
    rank: int

    def allreduce_(self, t: torch.Tensor) -> torch.Tensor: ...

    def gradient_sync(self, ts: TrainState): ...  # -> grad_sync.GradSync (step() after each backward)


@dataclass
class TrainSpec:
    node: str
    stage: int
    max_epochs: int
    patience: int = 3
    min_delta: float = 0.0
    batch_size: int = 256
    seed: int = 0
    batch_order: str = "node"  # "node" or "family" (``epoch_order``)
    inherit: str = "best"
    preset: str = "small"
    learning_rate: float = 1e-3
    dropout: float | None = None
    device: str = "cpu"
    inject_nan: bool = False  # fault injection: the loss becomes NaN in the first step
    slow_seconds: float = 0.0  # fault injection: sleep this long per epoch (serving polls)


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    loss: float  # mean training MSE of the epoch
    val_loss: float
    seconds: float


@dataclass
class EpochEnd:
    """What the per-epoch hook sees (checkpointing): the live state and the stopping bookkeeping."""

    node: str
    epoch: int
    history: list[EpochRecord]
    improved: bool
    best_epoch: int
    best_val: float
    wait: int
    state: Callable[[], ModelState]  # snapshot of the current (last) state
    best: ModelState  # the best epoch's state (a view: copy before keeping it)
    will_stop: bool
    start_checksum: str = ""  # checksum of the node's initial state (checkpoints record it)


@dataclass
class ResumePoint:
    """Where an interrupted node continues: its state after ``epochs_done`` epochs."""

    epochs_done: int
    history: list[EpochRecord]
    best_epoch: int
    best_val: float
    wait: int
    state: ModelState
    best: ModelState


@dataclass
class NodeOutcome:
    node: str
    epochs_planned: int
    epochs_run: int
    stopped_early: bool
    best_epoch: int
    history: list[EpochRecord]
    train_loss: float  # training loss of the best epoch
    val_loss: float  # best val_loss
    val_loss_last: float
    test_loss: float  # holdout loss of the inherited (best or last) state
    cell_val: tuple[np.ndarray, np.ndarray, np.ndarray]  # (cell index, n_rows, mse) for val cells
    n_train_rows: int
    n_val_rows: int
    n_train_cells: int
    n_val_cells: int
    steps: int
    train_s: float
    start_checksum: str
    inherit_state: ModelState
    best_state: ModelState = field(repr=False, default=None)
    resumed_from: int = 0  # epochs taken from a ResumePoint (0: trained from the start)
    # (cell index, n_rows, mse) on the common holdout rows, per cell with holdout rows: no
    # node trains on these rows, so siblings compare on them (impact.py)
    cell_test: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    cell_pred: tuple | None = None  # (cell index, drug index, prediction, label) or None
    # partition = "drugs": (drug index, n_rows, mse) per held-out drug / on the holdout rows
    drug_val: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    drug_test: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


def _shard(rows: np.ndarray, group: Group | None) -> np.ndarray:
    return rows if group is None else rows[group.rank :: group.size]


def evaluate_rows(ts: TrainState, tables: DeviceTables, rows: np.ndarray,
                  per_row: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``per_row(prediction, label)`` (float64, on the device) for ``rows``, in eval mode
    and in chunks: the one evaluation loop of the trainer and the baselines."""
    out = torch.empty(len(rows), dtype=torch.float64, device=tables.device)
    was_training = ts.module.training
    ts.module.eval()
    try:
        with torch.no_grad():
            for a in range(0, len(rows), EVAL_CHUNK):
                idx = tables.index(rows[a : a + EVAL_CHUNK])
                xs, y = tables.gather(idx)
                out[a : a + len(idx)] = per_row(ts.forward(*xs), y)
    finally:
        ts.module.train(was_training)
    return out


def squared_errors(ts: TrainState, tables: DeviceTables, rows: np.ndarray) -> torch.Tensor:
    """Per-row squared error (float64, on the device) of the current state, in eval mode."""
    return evaluate_rows(ts, tables, rows, lambda pred, y: (pred - y).double().square())


def _reduce(values: list[float], group: Group | None) -> list[float]:
    if group is None:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    group.allreduce_(t)
    return t.tolist()


def mean_loss(ts: TrainState, tables: DeviceTables, rows: np.ndarray, group: Group | None = None) -> float:
    """MSE over ``rows`` (sharded over the group and summed)."""
    local = _shard(rows, group)
    total = float(squared_errors(ts, tables, local).sum().item()) if len(local) else 0.0
    total, n = _reduce([total, float(len(local))], group)
    return total / n if n else math.nan


def _unit_index(tables: DeviceTables, unit: str) -> tuple[np.ndarray, int]:
    """(row -> unit index, number of units) for the partition unit "cell" or "drug"."""
    return (tables.drug_index_np, tables.n_drugs) if unit == "drug" else (tables.cell_index_np, tables.n_cells)


def per_cell_mse(ts: TrainState, tables: DeviceTables, rows: np.ndarray, cells: np.ndarray,
                 group: Group | None = None, unit: str = "cell") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cells, rows per cell, MSE per cell) over ``rows``; NaN for a cell without rows.
    ``unit = "drug"``: the same per drug (``cells`` are then drug indices)."""
    local = _shard(rows, group)
    sq = squared_errors(ts, tables, local).cpu().numpy() if len(local) else np.zeros(0)
    index, n_units = _unit_index(tables, unit)
    which = index[local]
    sums = np.bincount(which, weights=sq, minlength=n_units)[cells]
    counts = np.bincount(which, minlength=n_units)[cells].astype(np.float64)
    if group is not None:
        both = torch.from_numpy(np.concatenate([sums, counts]))
        group.allreduce_(both)
        sums, counts = both[: len(cells)].numpy(), both[len(cells) :].numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        mse = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return cells.astype(np.int64), counts.astype(np.int64), mse


def holdout_cell_mse(ts: TrainState, tables: DeviceTables, test: np.ndarray,
                     group: Group | None = None, unit: str = "cell") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``per_cell_mse`` on the holdout rows, for every cell that has holdout rows.

    One evaluation pass after training (eval mode, no RNG drawn), so it cannot change
    what the node learned; the cell list comes from the unsharded rows, identical on
    every rank of a group.
    """
    if len(test) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    cells = np.unique(_unit_index(tables, unit)[0][test]).astype(np.int64)
    return per_cell_mse(ts, tables, test, cells, group, unit)


def pair_predictions(ts: TrainState, tables: DeviceTables, rows: np.ndarray, cells: np.ndarray,
                     group: Group | None = None) -> tuple[np.ndarray, ...] | None:
    """The state's prediction for *every* drug of each validation cell, and the measured label.

    Returns (cell index, drug index, prediction, label) over the cells x drugs grid, label =
    mean of the cell's validation rows for that drug (NaN where unmeasured). Why every drug
    and not only the measured ones: a cell's responses can then be compared with the
    held-out predictions of any other cell on the same drugs (the swap test of
    ``hbl_mpi/diagnosis.py``). Cost: one forward pass over cells x drugs pairs, about one
    more evaluation of the node's validation rows. Data with a dose column has no single
    prediction per (cell, drug): None. A group computes a shard of the cells each and sums.
    """
    if tables.dose is not None or tables.drug_index_np is None or len(cells) == 0:
        return None
    n_d = tables.n_drugs
    cells = np.asarray(cells, dtype=np.int64)
    pred = np.zeros(len(cells) * n_d, dtype=np.float64)
    mine = np.arange(len(cells)) if group is None else np.arange(group.rank, len(cells), group.size)
    if len(mine):
        c = np.repeat(cells[mine], n_d)
        d = np.tile(np.arange(n_d, dtype=np.int64), len(mine))
        where = (mine[:, None] * n_d + np.arange(n_d)[None, :]).ravel()
        was_training = ts.module.training
        ts.module.eval()
        try:
            with torch.no_grad():
                for a in range(0, len(c), EVAL_CHUNK):
                    xs = tables.gather_pairs(tables.index(c[a : a + EVAL_CHUNK]), tables.index(d[a : a + EVAL_CHUNK]))
                    pred[where[a : a + EVAL_CHUNK]] = ts.forward(*xs).double().cpu().numpy()
        finally:
            ts.module.train(was_training)
    if group is not None:
        t = torch.from_numpy(pred)
        group.allreduce_(t)
        pred = t.numpy()
    # measured labels: mean of the validation rows of each (cell, drug)
    pos = np.full(tables.n_cells, -1, dtype=np.int64)
    pos[cells] = np.arange(len(cells))
    rc = pos[tables.cell_index_np[rows]]
    key = rc * n_d + tables.drug_index_np[rows]
    lab = tables.label.index_select(0, tables.index(rows)).double().cpu().numpy()
    tot = np.bincount(key, weights=lab, minlength=len(pred))
    cnt = np.bincount(key, minlength=len(pred))
    with np.errstate(invalid="ignore", divide="ignore"):
        label = np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)
    return (np.repeat(cells, n_d), np.tile(np.arange(n_d, dtype=np.int64), len(cells)),
            pred.astype(np.float32), label.astype(np.float32))


def _sleep_serving(seconds: float, poll: Callable[[], None] | None) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if poll is not None:
            poll()
        time.sleep(min(0.02, left))


def train_node(
    tables: DeviceTables,
    rows: NodeRows,
    init: ModelState,
    spec: TrainSpec,
    *,
    train_state: TrainState,
    group: Group | None = None,
    poll: Callable[[], None] | None = None,
    on_epoch: Callable[[EpochEnd], None] | None = None,
    resume: ResumePoint | None = None,
) -> NodeOutcome:
    """Train one node from ``init`` (or continue from ``resume``) and evaluate it."""
    t0 = time.perf_counter()
    ts = train_state
    if len(rows.train) == 0:
        raise RuntimeError(f"node {spec.node} has no training rows")
    if len(rows.val) == 0:
        raise RuntimeError(f"node {spec.node} has no validation rows (its cells' rows are all in the holdout)")
    start_checksum = init.checksum()
    ts.load(resume.state if resume is not None else init)
    ts.zero_grad()
    ts.optimizer.param_groups[0]["lr"] = spec.learning_rate
    best = clone_flat(resume.best.flat) if resume is not None else ts.snapshot().flat
    history = list(resume.history) if resume is not None else []
    best_val = resume.best_val if resume is not None else math.inf
    best_epoch = resume.best_epoch if resume is not None else 0
    wait = resume.wait if resume is not None else 0
    first_epoch = resume.epochs_done + 1 if resume is not None else 1
    n_global = spec.batch_size
    spe = steps_per_epoch(len(rows.train), n_global)

    def step_at(e: int) -> int:  # Adam's step count at the end of epoch e
        return init.step + e * spe

    train_rows = rows.train
    ts.module.train()
    sync = group.gradient_sync(ts) if group is not None else None

    epoch = first_epoch - 1
    stop = wait >= spec.patience
    while not stop and epoch < spec.max_epochs:
        epoch += 1
        e0 = time.perf_counter()
        es, order = epoch_order(train_rows, len(tables.cell_index_np), spec, epoch)
        torch.manual_seed(es)
        total = torch.zeros((), dtype=torch.float64, device=tables.device)
        for a in range(0, len(order), n_global):
            batch = order[a : a + n_global]
            local = _shard(batch, group)
            idx = tables.index(local)
            xs, y = tables.gather(idx)
            sq = (ts.forward(*xs) - y).square().sum()
            if spec.inject_nan and epoch == 1 and a == 0:
                sq = sq * float("nan")
            (sq / len(batch)).backward()
            if sync is not None:
                sync.step()  # the bucket reductions posted during backward, then Adam
            else:
                ts.optimizer_step()
            ts.zero_grad()
            total += sq.detach().double()
            if poll is not None:
                poll()
        if sync is not None:
            sync.gather_state()  # a sharded group's Adam moments: whole before anything reads them
        if spec.slow_seconds > 0:  # a testing aid; its line is the event tests wait for
            print(f"[hbl_mpi] fault_slow_nodes: node {spec.node} epoch {epoch}: sleeping {spec.slow_seconds:g} s",
                  flush=True)
            _sleep_serving(spec.slow_seconds, poll)
        loss_sum, n = _reduce([float(total.item()), float(len(_shard(order, group)))], group)
        loss = loss_sum / n
        val = mean_loss(ts, tables, rows.val, group)
        if not (math.isfinite(loss) and math.isfinite(val)):
            raise NonFiniteLoss(f"node {spec.node}: loss {loss:.4g}, val_loss {val:.4g} at epoch {epoch}")
        history.append(EpochRecord(epoch, loss, val, time.perf_counter() - e0))
        improved = val < best_val - spec.min_delta
        if improved:
            best_val, best_epoch, wait = val, epoch, 0
            best.copy_(ts.flat)
        else:
            wait += 1
        stop = wait >= spec.patience
        if on_epoch is not None:
            on_epoch(EpochEnd(spec.node, epoch, history, improved, best_epoch, best_val, wait,
                              ts.disk_snapshot, ModelState(best, ts.n_params, step_at(best_epoch)),
                              stop or epoch >= spec.max_epochs, start_checksum))
        if poll is not None:
            poll()

    last = ts.snapshot()
    best_state = ModelState(best, ts.n_params, step_at(best_epoch))
    inherit = best_state if spec.inherit == "best" else last
    ts.load(inherit)
    test_loss = mean_loss(ts, tables, rows.test, group) if len(rows.test) else math.nan
    drug_val = drug_test = None
    if rows.unit == "drug":  # per held-out drug; no per-cell tables (no cell was held out)
        none = np.zeros(0, dtype=np.int64)
        cell_val, cell_pred, cell_test = (none, none, np.zeros(0)), None, None
        drug_val = per_cell_mse(ts, tables, rows.val, rows.val_units, group, unit="drug")
        drug_test = holdout_cell_mse(ts, tables, rows.test, group, unit="drug")
    else:
        cell_val = per_cell_mse(ts, tables, rows.val, rows.val_cells, group)
        cell_pred = pair_predictions(ts, tables, rows.val, rows.val_cells, group)
        cell_test = holdout_cell_mse(ts, tables, rows.test, group)
    best_rec = history[best_epoch - 1]
    return NodeOutcome(
        node=spec.node, epochs_planned=spec.max_epochs, epochs_run=len(history),
        stopped_early=len(history) < spec.max_epochs, best_epoch=best_epoch, history=history,
        train_loss=best_rec.loss, val_loss=best_val, val_loss_last=history[-1].val_loss,
        test_loss=test_loss, cell_val=cell_val, n_train_rows=len(rows.train), n_val_rows=len(rows.val),
        n_train_cells=len(rows.train_cells), n_val_cells=len(rows.val_cells),
        steps=spe * len(history),
        train_s=time.perf_counter() - t0, start_checksum=start_checksum, inherit_state=inherit,
        best_state=best_state, resumed_from=resume.epochs_done if resume is not None else 0,
        cell_test=cell_test,
        cell_pred=cell_pred,
        drug_val=drug_val,
        drug_test=drug_test,
    )


def epoch_order(train_rows: np.ndarray, n_rows: int, spec: TrainSpec, epoch: int) -> tuple[int, np.ndarray]:
    """(seed of the epoch's dropout masks, the training rows in the order the epoch walks them).

    ``node``: the node's own shuffle of its rows, seeded by (seed, node, epoch).
    ``family``: one shuffle of *all* ``n_rows`` rows seeded by (seed, parent, epoch), which
    every sibling filters to its own training rows, and the same dropout seed. Siblings
    then see their shared rows in the same order and nearly the same batches (shifted by
    the rows one holds out and another does not) with one mask stream: common random
    numbers, so the difference between two siblings is their data rather than their luck,
    which is what the impact estimator's family contrasts measure (docs/findings/impact.md §8.8).
    """
    if spec.batch_order == "family":
        es = derive_seed(spec.seed, f"family:{parent_of(spec.node)}", epoch)
        perm = generator(es).permutation(n_rows)
        mine = np.zeros(n_rows, dtype=bool)
        mine[train_rows] = True
        return es, perm[mine[perm]]
    es = derive_seed(spec.seed, spec.node, epoch)
    return es, train_rows[generator(es).permutation(len(train_rows))]


def steps_per_epoch(n_rows: int, batch: int) -> int:
    return -(-n_rows // batch)
