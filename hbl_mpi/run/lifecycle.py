"""One node's life, written once for the three drivers: start, train, record, hold, release.

The serial driver (``serial.py``), the MPI scheduler (``scheduler.py``, rank 0) and the
MPI worker (``worker.py``) differ only in how the pieces below are wired:

* ``NodeRunner`` is the training side (the serial driver, every worker): it takes the
  node's initial state from its ``policy.Source`` (the seeded fresh state, a held parent,
  one received from another group, or a finished parent's checkpoint), trains the node
  (resuming it from its own checkpoint when the restart allows), holds the finished
  node's state when it has children, and contains a failure: the node's result says
  ``ok`` or carries the error, as data (as mpi4py.futures carries errors).
* ``Ledger`` is rank 0's side (the serial driver, the scheduler): the tree's statuses
  (``policy.TreeState``, restored from a restart's finished nodes), the done, failed and
  skipped rows written to results.h5, and the held parents that can be released.
* ``ParentStates`` is the serial driver's holder of parent states, with the interface of
  the worker's (``transfer.OutgoingStates``: ``hold``/``get``/``release``).

Which ``Source`` a node gets is ``policy.source_for``, in all three; the MPI scheduler
chooses its groups with ``policy.place``, the serial driver walks depth-first on one
"group" (only the states of the current path are held).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from hbl_mpi.checkpoint import Checkpointing
from hbl_mpi.run.context import RunContext
from hbl_mpi.adaptive.growth import Growth
from hbl_mpi.runtime.liveness import RankGone
from hbl_mpi.runtime.messages import NodeReport
from hbl_mpi.tree.plan import parent_of
from hbl_mpi.tree.policy import Source, TreeState
from hbl_mpi.run.node_records import node_row, node_tables, payload
from hbl_mpi.store.results import ResultsWriter
from hbl_mpi.train.flat_state import ModelState, TrainState


class StateHolder(Protocol):
    def hold(self, node: str, state: ModelState) -> None: ...

    def get(self, node: str) -> ModelState: ...


class ParentStates:
    """Finished parents' states held in this process (the serial driver's holder)."""

    def __init__(self):
        self.held: dict[str, ModelState] = {}

    def hold(self, node: str, state: ModelState) -> None:
        self.held[node] = state

    def get(self, node: str) -> ModelState:
        return self.held[node]

    def release(self, node: str) -> None:
        del self.held[node]

    def __contains__(self, node: str) -> bool:
        return node in self.held


@dataclass
class NodeRunner:
    """Train nodes in this process: initial state by source, train, hold, contain failures.

    ``holder`` keeps finished parents' states (``ParentStates``, or the worker's
    ``OutgoingStates``); ``group``/``poll`` go to the trainer (data parallel, serving
    forks while training); ``rank`` is written in the node's row.
    ``keep_loaded_parents``: a parent state loaded from a checkpoint is held for its
    other children (the serial driver: one process trains them all; a worker does not,
    rank 0 does not know of it and would never release it).
    """

    ctx: RunContext
    holder: StateHolder
    checkpoints: Checkpointing | None = None
    group: Any = None
    poll: Callable[[], None] | None = None
    rank: int = 0
    keep_loaded_parents: bool = False
    _train_state: TrainState | None = field(default=None, init=False, repr=False)

    @property
    def train_state(self) -> TrainState:
        """The process's one training buffer (model + optimizer), built on first use."""
        if self._train_state is None:
            self._train_state = self.ctx.new_train_state()
        return self._train_state

    def initial_state(self, node: str, source: Source,
                      receive: Callable[[TrainState], ModelState] | None = None) -> tuple[ModelState, float]:
        """``node``'s initial state and the seconds it took to get it (transfer or load)."""
        parent = parent_of(node)
        if source is Source.FRESH:
            return self.ctx.initial_state(), 0.0
        if source is Source.LOCAL:
            return self.holder.get(parent), 0.0
        t0 = time.perf_counter()
        if source is Source.GROUP:
            if receive is None:
                raise RuntimeError(f"node {node}: source {source.value} needs a receive")
            state = receive(self.train_state)
        elif source is Source.CHECKPOINT:
            state = self.ctx.parent_from_checkpoint(parent)
            if self.keep_loaded_parents:
                self.holder.hold(parent, state)
        else:
            raise RuntimeError(f"unknown state source {source!r}")
        return state, time.perf_counter() - t0

    def run(self, node: str, source: Source,
            receive: Callable[[TrainState], ModelState] | None = None) -> NodeReport:
        """Train ``node``; a failure of the node is returned (the run goes on), a dead rank
        (``RankGone``) is raised: it is not the node's fault, the job ends."""
        try:
            init, transfer_s = self.initial_state(node, source, receive)
            outcome = self.ctx.train(node, init, self.train_state, group=self.group, poll=self.poll,
                                     checkpoints=self.checkpoints)
        except RankGone:
            raise
        except Exception as e:  # contained: the node fails, the run goes on
            return NodeReport(node, False, error=f"{type(e).__name__}: {e}")
        if self.ctx.holds_state(node):
            self.holder.hold(node, outcome.inherit_state)
        result = payload(outcome, transfer_s)
        result["row"]["rank"] = self.rank
        return NodeReport(node, True, result)

    def close(self) -> None:
        """The queued checkpoint writes reach the disk (before the run reports)."""
        if self.checkpoints is not None:
            self.checkpoints.close()


class Ledger:
    """Rank 0's record of the tree: statuses, rows written, parents to release.

    ``done_before``: the restart's finished nodes (``ctx.run_info.done``), done from the
    start, not run again. ``where``: how a failure's log line names its place
    (the scheduler: "on group G").
    """

    def __init__(self, ctx: RunContext, writer: ResultsWriter, done_before=(), log=print):
        self.ctx = ctx
        self.writer = writer
        self.log = log
        self.done_before = set(done_before)
        self.tree = TreeState.from_plan(ctx.plan, self.done_before)
        self.growth = Growth.of(ctx, self.tree, writer)  # adaptive: the rule grows the tree
        self.created: list[str] = []  # nodes the last finish() created (adaptive), for the driver
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def start(self, node: str) -> float:
        """``node`` is handed to a trainer; returns its start time (seconds into the run)."""
        self.tree.mark_running(node)
        return self.now()

    def finish(self, result: NodeReport, *, group: int, rank: int, start: float, source: Source,
               where: str = "") -> float:
        """Record a node's result: a done row, or a failed row and a skipped row for every
        descendant that needed it. Returns the stop time."""
        stop = self.now()
        node = result.node
        g = self.growth
        self.created = []
        if result.ok:
            # the trainer holds the state of any node with children in the full tree (NodeRunner.run)
            self.tree.mark_done(node, group, may_grow=g is not None and g.may_grow(node),
                                holds=None if g is None else self.ctx.holds_state(node))
            res = result.payload
            tables = node_tables(res["tables"], self.ctx.dataset.cell_ids, self.ctx.dataset.drug_ids)
            self.writer.add(self._row(node, "done", group=group, start=start, stop=stop, source=source.value,
                                      **res["row"]), res["history"], tables)
            if g is not None:
                self.created = g.final(node, "done", tables["cell_val"])
            return stop
        skipped = self.tree.mark_failed(node)
        self.writer.add(self._row(node, "failed", group=group, rank=rank, start=start, stop=stop,
                                  error=result.error))
        for s in skipped:
            self.writer.add(self._row(s, "skipped", error=f"ancestor {node} failed"))
        self.log(f"[hbl_mpi] node {node} failed{where}: {result.error}")
        if g is not None:
            self.created = [c for n in [node] + skipped for c in g.final(n, self.tree.status[n].value)]
        return stop

    def _row(self, node: str, status: str, **fields) -> dict:
        pn = self.ctx.plan.nodes[node]
        if self.ctx.plan.adaptive:  # why the node exists (full runs' node table is unchanged)
            fields["expanded_by"] = pn.expanded_by
        return node_row(node, pn.parent, pn.stage, status, **{"epochs_planned": self.ctx.epoch_budget(node), **fields})

    def releasable(self) -> list[tuple[str, int]]:
        """Held parents all of whose children have started, forgotten here: (parent, holder
        group) for the caller to free."""
        out = self.tree.releasable()
        for parent, _ in out:
            self.tree.release(parent)
        return out

    def counts(self) -> dict[str, int]:
        return self.tree.counts()
