"""Everything one rank needs to train plan nodes, built once per run.

Both drivers use it: the serial driver (``serial.py``) and every MPI worker
(``worker.py``). Keeping the per-node inputs (rows, epoch budget, seeds) in one place is
what makes the MPI runtime reproduce the serial driver bit for bit on CPU.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass, field

import h5py
import mpi4py
import numpy as np
import pandas as pd
import torch

from hbl_mpi import __version__
from hbl_mpi.checkpoint import (Checkpointing, CkptParams, RestartInfo, open_checkpointing,
                                parent_state_from_checkpoint, plan_restart, run_fingerprint)
from hbl_mpi.core.config import RunConfig
from hbl_mpi.data import load_dataset
from hbl_mpi.data.dataset import Dataset
from hbl_mpi.analysis.diagnosis import expression_neighbours
from hbl_mpi.core.epochs import EpochStrategy
from hbl_mpi.adaptive.rule import Expander
from hbl_mpi.tree.plan import Plan, PlanSpec, plan_for
from hbl_mpi.train.flat_state import ModelState, TrainState
from hbl_mpi.train.device import resolve_device
from hbl_mpi.train.device_tables import DeviceTables
from hbl_mpi.train.trainer import NodeOutcome, TrainSpec, train_node
from hbl_mpi.models.plugin import ModelSource, check_model, initial_state as seeded_state, source_for
from hbl_mpi.train.optim import OptimizerSpec
from hbl_mpi.uno import InputSpec


def versions() -> dict[str, str]:
    out = {
        "hbl_mpi": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
        "numpy": np.__version__, "pandas": pd.__version__, "h5py": h5py.__version__,
        "mpi4py": mpi4py.__version__, "platform": platform.platform(),
    }
    try:
        from mpi4py import MPI  # here, not above: importing MPI initialises it (the serial driver need not)

        out["mpi"] = MPI.Get_library_version().splitlines()[0].strip()
    except Exception:  # MPI not initialisable: the serial driver still runs
        out["mpi"] = "unavailable"
    return out


@dataclass
class RunContext:
    """The run's typed inputs (config, data, plan, device, the restart's decisions) and the
    per-rank things built from them on first use (device tables, initial state, ...).
    What a node produces is ``results.py``'s business, how it lives ``lifecycle.py``'s."""

    cfg: RunConfig
    dataset: Dataset
    plan: Plan
    device: torch.device
    expander: Expander | None = None  # an adaptive run's (rank 0 / serial only); set by the run command
    run_info: RestartInfo | None = None  # set by the run command (rank 0 decides, all ranks get it)
    results_seen: tuple | None = None  # OUT/results.h5's (inode, size, mtime) when the run command judged it
    strategy: EpochStrategy = field(init=False)
    _tables: DeviceTables | None = field(default=None, init=False, repr=False)
    _initial: ModelState | None = field(default=None, init=False, repr=False)
    _data_checksum: str | None = field(default=None, init=False, repr=False)
    _ckpt_params: CkptParams | None = field(default=None, init=False, repr=False)
    _model: ModelSource | None = field(default=None, init=False, repr=False)
    _n_params: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self.strategy = self.cfg.epoch_strategy

    @classmethod
    def build(cls, cfg: RunConfig, dataset: Dataset | None = None) -> "RunContext":
        """Load the data (unless given) and build the plan; InputError on bad input."""
        ds = dataset if dataset is not None else load_dataset(cfg.data)
        plan = plan_for(ds, PlanSpec.from_config(cfg))
        return cls(cfg, ds, plan, resolve_device(cfg.device))

    def static_tables(self) -> dict[str, pd.DataFrame]:
        """Run-level tables rank 0 writes once beside the plan: the cells' expression neighbours
        (for the cell diagnosis; not for a drugs-partition run, which has none) and the cell
        metadata (the data file's, or the config's ``cell_metadata``) for the report."""
        nb = None if self.plan.unit == "drug" else expression_neighbours(self.dataset)
        out = {} if nb is None else {"cell_neighbours": nb}
        if self.dataset.cell_metadata is not None:
            out["cell_metadata"] = self.dataset.cell_metadata
        return out

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
        return run_fingerprint(self.cfg, self.data_checksum, self.model.fingerprint_hash)

    @property
    def model(self) -> ModelSource:
        """The configured model (an Uno preset or a plug-in), resolved on first use."""
        if self._model is None:
            self._model = source_for(self.cfg)
        return self._model

    @property
    def inputs(self) -> InputSpec:
        return InputSpec.of(self.dataset)

    def check_model(self) -> int:
        """Build the model and run it on a probe batch (``plugin.check_model``): InputError
        before any rank trains. Returns the parameter count."""
        if self._n_params is None:
            self._n_params = check_model(self.model, self.inputs)
        return self._n_params

    def model_line(self) -> dict:
        """The per-model line of the results and the report: name, source hash, parameter count."""
        return {"model": self.model.name, "model_source": self.model.source_hash,
                "model_parameters": self.check_model()}

    @property
    def ckpt_params(self) -> CkptParams:
        """The run's ``CkptParams`` (CANDLE names), with run metadata for ckpt-info.json."""
        if self._ckpt_params is None:
            self._ckpt_params = CkptParams.for_run(self.cfg, self.data_checksum, self.fingerprint)
        return self._ckpt_params

    @property
    def tables(self) -> DeviceTables:
        if self._tables is None:
            self._tables = DeviceTables.from_dataset(self.dataset, self.device)
        return self._tables

    def initial_state(self) -> ModelState:
        """The seeded fresh initialisation every stage-1 node starts from."""
        if self._initial is None:
            self._initial = seeded_state(
                self.model, self.inputs, self.cfg.seed, self.cfg.learning_rate, OptimizerSpec.of(self.cfg),
            ).to(self.device)
        return self._initial

    def new_train_state(self) -> TrainState:
        return TrainState(self.model.build(self.inputs), self.cfg.learning_rate, self.device,
                          OptimizerSpec.of(self.cfg))

    def open_checkpointing(self, *, write: bool = True, agree=None, log=None) -> Checkpointing | None:
        """This process's checkpointing (None: the run neither writes nor reads any)."""
        read = self.run_info is not None and self.run_info.reads_checkpoints
        return open_checkpointing(self.ckpt_params, self.fingerprint, read=read, write=write, agree=agree, log=log)

    def parent_from_checkpoint(self, parent: str) -> ModelState:
        """A finished parent's state from its final checkpoint, on this rank's device."""
        expected = self.run_info.parents_from_ckpt.get(parent, "") if self.run_info is not None else ""
        state = parent_state_from_checkpoint(self.ckpt_params, self.fingerprint, self.cfg.inherit, expected, parent)
        return state.to(self.device)

    def plan_restart(self, previous, restart: bool) -> RestartInfo:
        """Rank 0's restart decision for this run (``checkpoint.plan_restart``)."""
        return plan_restart(self.plan, self.ckpt_params, self.fingerprint, self.data_checksum, self.cfg.inherit,
                            previous, restart)

    # ---- per node -----------------------------------------------------------
    def nodes(self) -> list[str]:
        return self.plan.trained_nodes()

    def has_children(self, node: str) -> bool:
        return bool(self.plan.nodes[node].children)

    def holds_state(self, node: str) -> bool:
        """Whether a finished ``node``'s state is kept for children: it has children, or, in
        an adaptive run, may get them (children in the full tree: rank 0 releases it when
        its round declines it)."""
        return bool(self.plan.candidate_children(node))

    def epoch_budget(self, node: str) -> int:
        """The most epochs ``node`` may train (the epoch strategy at its stage)."""
        return self.strategy.budget(self.plan.nodes[node].stage, self.cfg.s)

    def spec_for(self, node: str) -> TrainSpec:
        pn = self.plan.nodes[node]
        c = self.cfg
        return TrainSpec(
            node=node, stage=pn.stage, max_epochs=self.epoch_budget(node),
            patience=c.patience, min_delta=c.min_delta, batch_size=c.batch_size, seed=c.seed,
            batch_order=c.batch_order, inherit=c.inherit, preset=c.model, learning_rate=c.learning_rate,
            dropout=c.resolved_dropout(), device=str(self.device),
            inject_nan=node in c.fault_nan_nodes,
            slow_seconds=c.fault_slow_seconds if node in c.fault_slow_nodes else 0.0,
        )

    def check_injected_failure(self, node: str) -> None:
        if node in self.cfg.fault_fail_nodes:
            raise RuntimeError(f"injected failure (fault_fail_nodes) in node {node}")

    def train(self, node: str, init: ModelState, train_state: TrainState, group=None, poll=None,
              checkpoints: Checkpointing | None = None) -> NodeOutcome:
        """Train one node from ``init``; returns the trainer's NodeOutcome.

        ``checkpoints``: resume the node from its last epoch checkpoint when the restart
        allows it, and checkpoint every epoch in the background.
        """
        self.check_injected_failure(node)
        spec = self.spec_for(node)
        session = checkpoints.begin(node, init, spec.max_epochs) if checkpoints is not None else None
        return train_node(self.tables, self.plan.rows(node), init, spec,
                          train_state=train_state, group=group, poll=poll,
                          on_epoch=checkpoints.hook(session) if session is not None else None,
                          resume=session.resume if session is not None else None)

    # ---- results ------------------------------------------------------------
    def run_attrs(self) -> dict:
        # the model line rides in `versions` (what code made the run), next to torch's version
        return {"config": self.cfg.as_dict(), "versions": {**versions(), **self.model_line()},
                "data_checksum": self.data_checksum}

