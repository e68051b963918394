"""The sublearning plan (docs/design.md §3): which cells each node validates on and trains on.

The cells are put in one global order (sorted ids, shuffled by the plan seed unless
``order = ordered``). The root's validation set is that whole list; a node's list is cut
into N consecutive parts of ``L // N`` items (the last part takes the remainder; if
``L < N`` each item is its own part) and child ``p.k`` validates on part ``k``. So every
node's validation set is a contiguous range ``[lo, hi)`` of the global order, children
partition their parent's range, and

    train(p.k) = train(p) ∪ (val(p) \\ val(p.k))  =  all cells \\ val(p.k)

(by induction from train(root) = ∅): training sets only grow and a validation cell was
never in an ancestor's training set. A fixed seeded fraction of response rows is the
holdout test set, excluded from every node's train and val.

With ``partition = "cells+drugs"`` the drugs get their own global order and cuts, and
child ``p.k`` validates on the block (cell part k) x (drug part k); it has
min(#cell parts, #drug parts) children. Train is again everything outside the block.

With ``partition = "drugs"`` the drugs are cut as the cells are above: ``p.k`` validates on
every cell's rows of drug part k (the block (all cells) x (drug part k)); ``Plan.unit`` is
then "drug". The holdout rows are the same seeded rows whatever the partition.

With ``groups = "COLUMN"`` the order is stably re-sorted by group and the root's children
are the groups' ranges (tree/groups.py). Everything here is a pure function of (ids, row
table, N, S, order, seed, group labels): every rank computes the same plan.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field

import numpy as np

from hbl_mpi.core.seeding import spawned
from hbl_mpi.core.errors import InputError
from hbl_mpi.tree.groups import GroupParts, groups_for
from hbl_mpi.tree.names import (  # noqa: F401 (re-exported: the plan's users name nodes through it)
    ROOT, SEP, child_name, components, cut, full_tree, node_sort_key, parent_of, stage_of)


@dataclass(frozen=True)
class PlanSpec:
    n: int = 4
    s: int = 3
    order: str = "shuffled"
    seed: int = 0
    partition: str = "cells"  # or "cells+drugs", "drugs"
    holdout_fraction: float = 0.1
    groups: str = ""  # a cell-metadata column: the first split holds out one group per node

    @classmethod
    def from_config(cls, cfg) -> "PlanSpec":
        return cls(cfg.n, cfg.s, cfg.order, cfg.seed, cfg.partition, cfg.holdout_fraction,
                   getattr(cfg, "groups", ""))


@dataclass
class PlanNode:
    name: str
    parent: str | None
    stage: int
    cells: tuple[int, int]  # [lo, hi) in Plan.cell_order
    drugs: tuple[int, int] | None = None  # [lo, hi) in Plan.drug_order when crossed
    children: list[str] = field(default_factory=list)
    n_val_rows: int = 0
    expanded_by: str = ""  # adaptive plans: why this node was created (``grow``'s reason)


@dataclass
class NodeRows:
    """Row indices (into the dataset's response table) of one node."""

    train: np.ndarray  # int64
    val: np.ndarray  # int64
    test: np.ndarray  # int64, the common holdout
    val_cells: np.ndarray  # int64 cell indices validated on
    train_cells: np.ndarray  # int64 cell indices trained on
    unit: str = "cell"  # what the per-unit errors are computed per: "cell" or "drug"
    val_units: np.ndarray | None = None  # int64 indices of the held-out units (None: val_cells)


@dataclass
class Plan:
    spec: PlanSpec
    cell_ids: np.ndarray
    drug_ids: np.ndarray
    cell_order: np.ndarray  # cell indices in plan order
    drug_order: np.ndarray  # drug indices in plan order
    holdout: np.ndarray  # bool (R,)
    nodes: dict[str, PlanNode]  # includes the root; breadth-first order
    # rows sorted for range lookups (non-holdout rows only)
    _rows_by_cell: np.ndarray = field(repr=False, default=None)
    _cell_rank_sorted: np.ndarray = field(repr=False, default=None)
    _row_cell_rank: np.ndarray = field(repr=False, default=None)
    _row_drug_rank: np.ndarray = field(repr=False, default=None)
    # adaptive expansion (``seedling``/``grow``): the full tree the created nodes are taken
    # from, and the parents whose children were decided (created or declined)
    candidates: dict[str, PlanNode] | None = field(repr=False, default=None)
    decided: set[str] = field(repr=False, default_factory=set)
    groups: GroupParts | None = field(repr=False, default=None)  # ``groups = COLUMN``: stage-1 parts

    @property
    def unit(self) -> str:
        """The partition unit: "drug" for ``partition = "drugs"``, else "cell"."""
        return "drug" if self.spec.partition == "drugs" else "cell"

    def val_units(self, name: str) -> np.ndarray:
        """The units ``name`` holds out (its validation cells, or drugs for ``drugs``)."""
        return self.val_drugs(name) if self.unit == "drug" else self.val_cells(name)

    # ---- tree navigation -------------------------------------------------
    def trained_nodes(self) -> list[str]:
        """All nodes that train (everything but the root), breadth-first."""
        return [n for n in self.nodes if n != ROOT]

    def __len__(self) -> int:
        return len(self.nodes) - 1

    def ancestors(self, name: str) -> list[str]:
        out = []
        p = parent_of(name)
        while p is not None:
            out.append(p)
            p = parent_of(p)
        return out

    # ---- adaptive expansion (docs/design.md §3): a created subset of the full tree ------
    @property
    def adaptive(self) -> bool:
        return self.candidates is not None

    def seedling(self, full_stages: int, reason: str = "full_stages") -> "Plan":
        """This plan cut to stages ``0..full_stages``; the rest becomes ``grow``'s candidates.

        Every node ever created is a copy of the full tree's node of the same name, so the
        partition rule, val(child) ⊂ val(parent) and the growing training sets hold by
        construction: adaptive expansion only chooses *which* subtrees exist.
        """
        full = self.candidates if self.adaptive else self.nodes
        nodes: dict[str, PlanNode] = {}
        for name, node in full.items():
            if node.stage <= full_stages:
                kids = list(node.children) if node.stage < full_stages else []
                nodes[name] = PlanNode(node.name, node.parent, node.stage, node.cells, node.drugs, kids,
                                       node.n_val_rows, "" if name == ROOT else reason)
        decided = {n for n, v in nodes.items() if v.stage < full_stages}
        return Plan(self.spec, self.cell_ids, self.drug_ids, self.cell_order, self.drug_order, self.holdout,
                    nodes, self._rows_by_cell, self._cell_rank_sorted, self._row_cell_rank,
                    self._row_drug_rank, candidates=full, decided=decided, groups=self.groups)

    def candidate_children(self, name: str) -> list[str]:
        """The children ``name`` has in the full tree (what ``grow`` would create)."""
        full = self.candidates if self.adaptive else self.nodes
        return list(full[name].children)

    def may_grow(self, name: str) -> bool:
        """An adaptive plan's node whose children are not decided yet (and could exist)."""
        return self.adaptive and name not in self.decided and bool(self.candidates[name].children)

    def grow(self, parent: str, reason: str) -> list[str]:
        """Create ``parent``'s children (the full tree's), each recording ``reason``; returns them."""
        if not self.adaptive:
            raise ValueError("grow: not an adaptive plan")
        if parent not in self.nodes:
            raise ValueError(f"grow: node {parent} is not in the plan")
        if parent in self.decided:
            raise ValueError(f"grow: the children of {parent} were decided already")
        self.decided.add(parent)
        kids = self.candidates[parent].children
        for k in kids:
            c = self.candidates[k]
            self.nodes[k] = PlanNode(c.name, c.parent, c.stage, c.cells, c.drugs, [], c.n_val_rows, reason)
        self.nodes[parent].children = list(kids)
        return list(kids)

    def decline(self, parent: str) -> None:
        """``parent`` gets no children (the rule did not choose it)."""
        self.decided.add(parent)

    def planned_row_epochs(self, strategy, stages: int, full: bool = False) -> dict[str, float]:
        """Per node: epochs planned x training rows, known before training (the budget's unit).

        A node trains on every non-holdout row outside its validation block, so its
        training rows are the non-holdout rows minus its validation rows. ``full``: over
        the full tree (an adaptive plan's candidates), not only the created nodes.
        """
        kept = int((~self.holdout).sum())
        nodes = (self.candidates if self.adaptive else self.nodes) if full else self.nodes
        return {n: float(strategy.budget(v.stage, stages) * (kept - v.n_val_rows))
                for n, v in nodes.items() if n != ROOT}

    # ---- cell sets -------------------------------------------------------
    def val_cells(self, name: str) -> np.ndarray:
        lo, hi = self.nodes[name].cells
        return self.cell_order[lo:hi]

    def train_cells(self, name: str) -> np.ndarray:
        if name == ROOT:
            return np.empty(0, dtype=self.cell_order.dtype)
        node = self.nodes[name]
        if node.drugs is not None:  # crossed: every cell has training rows outside the block
            return self.cell_order.copy()
        lo, hi = node.cells
        return np.concatenate([self.cell_order[:lo], self.cell_order[hi:]])

    def train_added_cells(self, name: str) -> np.ndarray:
        """Cells this node trains on that its parent did not (val(parent) minus val(node))."""
        parent = self.nodes[name].parent
        plo, phi = self.nodes[parent].cells
        lo, hi = self.nodes[name].cells
        return np.concatenate([self.cell_order[plo:lo], self.cell_order[hi:phi]])

    def val_drugs(self, name: str) -> np.ndarray | None:
        d = self.nodes[name].drugs
        return None if d is None else self.drug_order[d[0]:d[1]]

    # ---- rows ------------------------------------------------------------
    def rows(self, name: str) -> NodeRows:
        """Train / val / test row indices of a node (O(log R) for cell partitions)."""
        node = self.nodes[name]
        lo, hi = node.cells
        a, b = np.searchsorted(self._cell_rank_sorted, [lo, hi])
        test = np.flatnonzero(self.holdout)
        if node.drugs is None:
            val = np.sort(self._rows_by_cell[a:b])
            train = np.sort(np.concatenate([self._rows_by_cell[:a], self._rows_by_cell[b:]]))
        else:
            dlo, dhi = node.drugs
            cand = self._rows_by_cell[a:b]
            dr = self._row_drug_rank[cand]
            in_block = (dr >= dlo) & (dr < dhi)
            val = np.sort(cand[in_block])
            mask = np.ones(len(self._row_cell_rank), dtype=bool)
            mask[self.holdout] = False
            mask[val] = False
            train = np.flatnonzero(mask)
        if name == ROOT:
            train = train[:0]
        return NodeRows(
            train=train.astype(np.int64),
            val=val.astype(np.int64),
            test=test.astype(np.int64),
            val_cells=self.val_cells(name).astype(np.int64),
            train_cells=self.train_cells(name).astype(np.int64),
            unit=self.unit,
            val_units=self.val_units(name).astype(np.int64) if self.unit == "drug" else None,
        )

    # ---- output ----------------------------------------------------------
    def stage_summary(self) -> list[dict]:
        """Per stage: node count and mean train / val cells."""
        out = []
        n_cells = len(self.cell_ids)
        for stage in range(1, self.spec.s + 1):
            names = [n for n, v in self.nodes.items() if v.stage == stage]
            if not names:
                continue
            val = [self.nodes[n].cells[1] - self.nodes[n].cells[0] for n in names]
            crossed = self.nodes[names[0]].drugs is not None
            train = [n_cells if crossed else n_cells - v for v in val]
            out.append({
                "stage": stage, "nodes": len(names),
                "mean_val_cells": float(np.mean(val)), "mean_train_cells": float(np.mean(train)),
                "mean_val_rows": float(np.mean([self.nodes[n].n_val_rows for n in names])),
            })
            if crossed:  # the drugs each node holds out (cells+drugs, drugs)
                out[-1]["mean_val_drugs"] = float(np.mean([np.diff(self.nodes[n].drugs)[0] for n in names]))
        return out

    def records(self):
        """Rows of plan.csv / the results' ``plan`` table: (node, parent, stage, cell, role)."""
        for name in self.trained_nodes():
            node = self.nodes[name]
            if self.unit == "drug":  # drug ids in the ``cell`` column, as the crossed plan's val_drug
                plo, phi = self.nodes[node.parent].drugs
                lo, hi = node.drugs
                for d in self.drug_order[lo:hi]:
                    yield (name, node.parent, node.stage, self.drug_ids[d], "val_drug")
                for d in np.concatenate([self.drug_order[plo:lo], self.drug_order[hi:phi]]):
                    yield (name, node.parent, node.stage, self.drug_ids[d], "train_added_drug")
                continue
            for c in self.val_cells(name):
                yield (name, node.parent, node.stage, self.cell_ids[c], "val")
            if node.drugs is None:
                for c in self.train_added_cells(name):
                    yield (name, node.parent, node.stage, self.cell_ids[c], "train_added")
            else:
                for d in self.val_drugs(name):
                    yield (name, node.parent, node.stage, self.drug_ids[d], "val_drug")

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(list(self.records()), columns=["node", "parent", "stage", "cell", "role"])

    def write_csv(self, path: str) -> int:
        """Write plan.csv to ``path`` (not atomic: callers write a temp name, then rename).

        Returns the number of data rows written.
        """
        rows = 0
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["node", "parent", "stage", "cell", "role"])
            for rec in self.records():
                w.writerow(rec)
                rows += 1
        return rows


def _global_order(ids: np.ndarray, order: str, rng: np.random.Generator) -> np.ndarray:
    """Entity indices sorted by id, then permuted unless ``order == "ordered"``."""
    by_id = np.argsort(np.asarray(ids, dtype=str), kind="stable")
    if order == "ordered":
        return by_id
    return by_id[rng.permutation(len(by_id))]


def build_plan(cell_ids, drug_ids, cell_index, drug_index, spec: PlanSpec,
               groups: GroupParts | None = None) -> Plan:
    """Build the plan of docs/design.md §3. Raises InputError for impossible settings.

    ``groups``: the stage-1 parts of ``groups = COLUMN`` (tree/groups.py)."""
    cell_ids = np.asarray(cell_ids, dtype=object)
    drug_ids = np.asarray(drug_ids, dtype=object)
    cell_index = np.asarray(cell_index, dtype=np.int64)
    drug_index = np.asarray(drug_index, dtype=np.int64)
    n_cells, n_rows = len(cell_ids), len(cell_index)
    if spec.n < 2:
        raise InputError(f"n must be >= 2; got {spec.n}")
    if spec.s < 1:
        raise InputError(f"s must be >= 1; got {spec.s}")
    if spec.order not in ("shuffled", "ordered"):
        raise InputError(f"order must be 'shuffled' or 'ordered'; got {spec.order!r}")
    if spec.partition not in ("cells", "cells+drugs", "drugs"):
        raise InputError(f"partition must be 'cells', 'cells+drugs' or 'drugs'; got {spec.partition!r}")
    if not 0.0 <= spec.holdout_fraction < 1.0:
        raise InputError(f"holdout_fraction must be in [0, 1); got {spec.holdout_fraction}")
    if len(drug_index) != n_rows:
        raise InputError(f"cell_index has {n_rows} rows but drug_index has {len(drug_index)}")
    if n_rows and (cell_index.min() < 0 or cell_index.max() >= n_cells
                   or drug_index.min() < 0 or drug_index.max() >= len(drug_ids)):
        raise InputError("response rows refer to cells or drugs outside the id lists")
    by_drug = spec.partition == "drugs"  # the drugs are cut; every node keeps all cells
    if spec.n > n_cells and not by_drug:
        raise InputError(f"n = {spec.n} is larger than the number of cells ({n_cells})")
    crossed = spec.partition in ("cells+drugs", "drugs")
    if groups is not None and spec.partition != "cells":
        raise InputError("config key 'groups' needs partition = 'cells' (a group is a set of cells)")
    if crossed and spec.n > len(drug_ids):
        raise InputError(f"n = {spec.n} is larger than the number of drugs ({len(drug_ids)})")

    rng_cells, rng_drugs, rng_holdout = spawned(spec.seed, 3)
    cell_order = _global_order(cell_ids, spec.order, rng_cells)
    drug_order = _global_order(drug_ids, spec.order, rng_drugs)
    if groups is not None:  # each group contiguous, in part order; the seeded order inside
        cell_order = cell_order[np.argsort(groups.part_of_cell[cell_order], kind="stable")]

    holdout = np.zeros(n_rows, dtype=bool)
    n_test = int(round(spec.holdout_fraction * n_rows))
    holdout[rng_holdout.permutation(n_rows)[:n_test]] = True

    cell_rank = np.empty(n_cells, dtype=np.int64)
    cell_rank[cell_order] = np.arange(n_cells)
    drug_rank = np.empty(len(drug_ids), dtype=np.int64)
    drug_rank[drug_order] = np.arange(len(drug_ids))
    row_cell_rank = cell_rank[cell_index]
    row_drug_rank = drug_rank[drug_index]
    kept = np.flatnonzero(~holdout)
    rows_by_cell = kept[np.argsort(row_cell_rank[kept], kind="stable")]
    cell_rank_sorted = row_cell_rank[rows_by_cell]
    # non-holdout rows per cell rank (for the empty-validation check)
    per_cell = np.bincount(row_cell_rank[kept], minlength=n_cells)
    cum = np.concatenate([[0], np.cumsum(per_cell)])
    if crossed:
        block = np.zeros((n_cells, len(drug_ids)), dtype=np.int64)
        np.add.at(block, (row_cell_rank[kept], row_drug_rank[kept]), 1)
        block_cum = block.cumsum(0).cumsum(1)
        block_cum = np.pad(block_cum, ((1, 0), (1, 0)))

    def val_row_count(cells, drugs):
        if drugs is None:
            return int(cum[cells[1]] - cum[cells[0]])
        (a, b), (c, d) = cells, drugs
        return int(block_cum[b, d] - block_cum[a, d] - block_cum[b, c] + block_cum[a, c])

    root = PlanNode(ROOT, None, 0, (0, n_cells), (0, len(drug_ids)) if crossed else None)
    root.n_val_rows = val_row_count(root.cells, root.drugs)
    if root.n_val_rows == 0:
        raise InputError(f"no response rows to train on ({n_rows} rows, {n_test} of them held out as the test set)")
    nodes = {ROOT: root}
    frontier = [root]
    for stage in range(1, spec.s + 1):
        if not frontier:  # no node left to cut (s = 10**8 must not loop for nothing)
            break
        if stage > 1 and all(_single_unit(p) for p in frontier):
            unit = "cell x drug block" if crossed else "cell"
            raise InputError(f"s = {spec.s} is deeper than the data allows: at stage {stage - 1} every validation "
                             f"set is a single {unit}, and deeper stages only repeat it; the largest useful s is "
                             f"{stage - 1}")
        nxt = []
        for parent in frontier:
            dparts = cut(*parent.drugs, spec.n) if crossed else None
            if by_drug:
                cparts = [parent.cells] * len(dparts)
            else:
                cparts = (groups.ranges() if groups is not None and stage == 1
                          else cut(*parent.cells, spec.n))
            dparts = dparts if crossed else [None] * len(cparts)
            for k, (cp, dp) in enumerate(zip(cparts, dparts), start=1):
                count = val_row_count(cp, dp)
                if count == 0:
                    continue  # a node with an empty validation set is not created
                name = child_name(parent.name, k)
                node = PlanNode(name, parent.name, stage, cp, dp, n_val_rows=count)
                parent.children.append(name)
                nodes[name] = node
                nxt.append(node)
        frontier = nxt
    _check_training_rows(nodes, len(kept), n_test)
    return Plan(spec, cell_ids, drug_ids, cell_order, drug_order, holdout, nodes,
                rows_by_cell, cell_rank_sorted, row_cell_rank, row_drug_rank, groups=groups)


def _single_unit(node: PlanNode) -> bool:
    """Whether the node validates on one cell (and one drug, crossed): ``cut`` gives it one child, itself."""
    return node.cells[1] - node.cells[0] <= 1 and (node.drugs is None or node.drugs[1] - node.drugs[0] <= 1)


def _check_training_rows(nodes: dict[str, PlanNode], n_kept: int, n_test: int) -> None:
    """Every trained node needs a training row: its training rows are the non-holdout rows
    outside its validation set (cells, or the cell x drug block), so there are
    ``n_kept - n_val_rows`` of them. A node without any would fail every epoch."""
    empty = [name for name, node in nodes.items() if name != ROOT and n_kept - node.n_val_rows <= 0]
    if empty:
        raise InputError(f"{len(empty)} node(s) of the plan have no training rows (first: {empty[0]}; "
                         f"{n_kept} rows are left after holding out {n_test} as the test set): lower "
                         "holdout_fraction, or use more cells")


def plan_for(dataset, spec: PlanSpec) -> Plan:
    """The data set's plan; with ``spec.groups`` its cell metadata gives the first split."""
    groups = groups_for(dataset, spec.groups, spec.n) if spec.groups else None
    return build_plan(dataset.cell_ids, dataset.drug_ids, dataset.cell_index, dataset.drug_index, spec, groups)

