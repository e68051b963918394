"""Everything one rank needs to train plan nodes, built once per run.

Both drivers use it: the serial driver (``serial.py``) and every MPI worker
(``worker.py``). Keeping the per-node inputs (rows, epoch budget, seeds) in one place is
what makes the MPI runtime reproduce the serial driver bit for bit on CPU.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .config import RunConfig
from .dataset import Dataset
from .epochs import EpochStrategy
from .errors import InputError
from .plan import Plan, PlanSpec, plan_for
from .state import ModelState, TrainState


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device = 'cuda' but torch sees no CUDA device (use device = 'cpu' or 'auto')")
    return torch.device(name)


def default_threads(ranks_on_host: int) -> int:
    """The rank's share of the host's cores (at least 1).

    When a launcher pinned this rank to a subset of the cores (``jsrun -c 7 -b rs``,
    ``srun --cpus-per-task``), that subset already is the rank's share; otherwise the
    host's cores are divided among the ranks on it.
    """
    total = os.cpu_count() or 1
    try:
        mine = len(os.sched_getaffinity(0))
    except AttributeError:
        mine = total
    if mine < total:
        return max(1, mine)
    return max(1, total // max(1, ranks_on_host))


def versions() -> dict[str, str]:
    import h5py
    import mpi4py

    from . import __version__

    out = {
        "hbl_mpi": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
        "numpy": np.__version__, "pandas": pd.__version__, "h5py": h5py.__version__,
        "mpi4py": mpi4py.__version__, "platform": platform.platform(),
    }
    try:
        from mpi4py import MPI

        out["mpi"] = MPI.Get_library_version().splitlines()[0].strip()
    except Exception:  # MPI not initialisable: the serial driver still runs
        out["mpi"] = "unavailable"
    return out


def load_dataset(path: str) -> Dataset:
    from .data import read_uno

    if not os.path.exists(path):
        raise InputError(f"data file {path!r} does not exist")
    return read_uno(path)


@dataclass
class RunContext:
    cfg: RunConfig
    dataset: Dataset
    plan: Plan
    device: torch.device
    run_info: object = None  # resume.RestartInfo, set by the run command (rank 0 decides)
    expander: object = None  # expansion.Expander of an adaptive run (rank 0 / serial only)
    strategy: EpochStrategy = field(init=False)
    _tables: object = field(default=None, init=False, repr=False)
    _initial: ModelState | None = field(default=None, init=False, repr=False)
    _data_checksum: str | None = field(default=None, init=False, repr=False)
    _ckpt_params: object = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self.strategy = self.cfg.epoch_strategy

    @classmethod
    def build(cls, cfg: RunConfig, dataset: Dataset | None = None) -> "RunContext":
        """Load the data (unless given) and build the plan; InputError on bad input."""
        ds = dataset if dataset is not None else load_dataset(cfg.data)
        plan = plan_for(ds, PlanSpec.from_config(cfg))
        return cls(cfg, ds, plan, resolve_device(cfg.device))

    # ---- lazily built, per rank ---------------------------------------------
    @property
    def data_checksum(self) -> str:
        if self._data_checksum is None:
            known = getattr(self.run_info, "data_checksum", "")
            self._data_checksum = known or self.dataset.checksum()
        return self._data_checksum

    @property
    def fingerprint(self) -> str:
        """What this run's nodes compute (config + data); stamped on every checkpoint."""
        if self.run_info is not None:
            return self.run_info.fingerprint
        from .resume import run_fingerprint

        return run_fingerprint(self.cfg, self.data_checksum)

    @property
    def ckpt_params(self):
        """The run's ``CkptParams`` (CANDLE names), with run metadata for ckpt-info.json."""
        if self._ckpt_params is None:
            from .resume import ckpt_params

            self._ckpt_params = ckpt_params(self.cfg, self.data_checksum, self.fingerprint)
        return self._ckpt_params

    @property
    def tables(self):
        if self._tables is None:
            from .tables import DeviceTables

            self._tables = DeviceTables.from_dataset(self.dataset, self.device)
        return self._tables

    def initial_state(self) -> ModelState:
        """The seeded fresh initialisation every stage-1 node starts from."""
        if self._initial is None:
            from .uno import initial_state

            self._initial = initial_state(
                self.dataset, self.cfg.model, self.cfg.seed, self.cfg.learning_rate,
                self.cfg.resolved_dropout(),
            ).to(self.device)
        return self._initial

    def new_train_state(self) -> TrainState:
        from .uno import build_model

        model = build_model(self.dataset, self.cfg.model, self.cfg.resolved_dropout())
        return TrainState(model, self.cfg.learning_rate, self.device)

    # ---- per node -----------------------------------------------------------
    def nodes(self) -> list[str]:
        return self.plan.trained_nodes()

    def has_children(self, node: str) -> bool:
        return bool(self.plan.nodes[node].children)

    def spec_for(self, node: str):
        from .trainer import TrainSpec

        pn = self.plan.nodes[node]
        c = self.cfg
        return TrainSpec(
            node=node, stage=pn.stage, max_epochs=self.strategy.budget(pn.stage, c.s),
            patience=c.patience, min_delta=c.min_delta, batch_size=c.batch_size, seed=c.seed,
            inherit=c.inherit, preset=c.model, learning_rate=c.learning_rate,
            dropout=c.resolved_dropout(), device=str(self.device),
            inject_nan=node in c.fault_nan_nodes,
            slow_seconds=c.fault_slow_seconds if node in c.fault_slow_nodes else 0.0,
        )

    def check_injected_failure(self, node: str) -> None:
        if node in self.cfg.fault_fail_nodes:
            raise RuntimeError(f"injected failure (fault_fail_nodes) in node {node}")

    def train(self, node: str, init: ModelState, train_state: TrainState, group=None, poll=None,
              checkpoints=None):
        """Train one node from ``init``; returns the trainer's NodeOutcome.

        ``checkpoints`` (a ``resume.Checkpointing``): resume the node from its last epoch
        checkpoint when the restart allows it, and checkpoint every epoch in the background.
        """
        from .trainer import train_node

        self.check_injected_failure(node)
        spec = self.spec_for(node)
        session = checkpoints.begin(node, init, spec.max_epochs) if checkpoints is not None else None
        return train_node(self.tables, self.plan.rows(node), init, spec,
                          train_state=train_state, group=group, poll=poll,
                          on_epoch=checkpoints.hook(session) if checkpoints is not None else None,
                          resume=session.resume if session is not None else None)

    # ---- results ------------------------------------------------------------
    def payload(self, outcome, transfer_s: float = 0.0) -> dict:
        """A finished node as plain data (what a worker reports to rank 0)."""
        o = outcome
        cells, n_rows, mse = o.cell_val
        return {
            "row": {
                "epochs_planned": o.epochs_planned, "epochs_run": o.epochs_run,
                "stopped_early": bool(o.stopped_early), "train_loss": o.train_loss,
                "val_loss": o.val_loss, "val_loss_last": o.val_loss_last, "test_loss": o.test_loss,
                "n_train_rows": o.n_train_rows, "n_val_rows": o.n_val_rows,
                "n_train_cells": o.n_train_cells, "n_val_cells": o.n_val_cells, "steps": o.steps,
                "train_s": o.train_s, "transfer_s": transfer_s, "best_epoch": o.best_epoch,
                "start_checksum": o.start_checksum,
                "inherit_checksum": o.inherit_state.checksum(), "resumed_from": o.resumed_from,
            },
            "history": [_history_dict(o.node, h) for h in o.history],
            "cell_val": (np.asarray(cells, dtype=np.int64), np.asarray(n_rows, dtype=np.int64),
                         np.asarray(mse, dtype=np.float64)),
        }

    def node_row(self, node: str, status: str, **fields) -> dict:
        pn = self.plan.nodes[node]
        row = {"node": node, "parent": pn.parent, "stage": pn.stage, "status": status,
               "epochs_planned": self.strategy.budget(pn.stage, self.cfg.s), "error": ""}
        if self.plan.adaptive:
            row["expanded_by"] = pn.expanded_by
        row.update(fields)
        return row

    def cell_val_records(self, cell_val) -> tuple:
        """(cell ids, n_rows, mse) arrays of a reported per-cell validation error."""
        cells, n_rows, mse = cell_val
        return (self.dataset.cell_ids[np.asarray(cells, dtype=np.int64)], np.asarray(n_rows, dtype=np.int64),
                np.asarray(mse, dtype=np.float64))

    def run_attrs(self) -> dict:
        return {"config": self.cfg.as_dict(), "versions": versions(),
                "data_checksum": self.data_checksum}


def _history_dict(node: str, h) -> dict:
    if isinstance(h, dict):
        d = dict(h)
    else:
        d = {k: getattr(h, k) for k in ("epoch", "loss", "val_loss", "seconds")}
    d["node"] = node
    return {k: d[k] for k in ("node", "epoch", "loss", "val_loss", "seconds")}

