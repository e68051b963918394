"""Metadata groups as the tree's first split (config ``groups = "COLUMN"``; docs/design.md §3).

Why: a single cell's effect on the others is at the training's noise floor
(docs/findings/impact.md §8.8-8.9); a group of cells (a lab, a tissue, a study) has an
effect many times larger, and a curator can act on a group. When the first split holds
out one group per stage-1 node, the root's children are siblings that start from the
same state and differ only by which group they did not learn: their holdout contrasts
measure each group's effect on the others (analysis/group_impact.py).

The rule (docs/findings/group-impact.md §1), a pure function of the labels and N:

* a cell's label is its value in the column; a cell without one (``""``, or no metadata
  row) gets the label ``NA``, a group of its own;
* with G groups and ``G <= max(N, MAX_GROUP_NODES)``: one stage-1 node per group, so
  the root has G children (not N; G may be smaller or larger than N);
* with more groups: the ``max(N, MAX_GROUP_NODES) - 1`` largest groups (ties by name)
  keep a node each and the remaining, smaller groups are pooled into one last node,
  labelled with their names joined by ``+``;
* parts are ordered by label (the pooled part last): node ``1.k`` holds out part ``k``.

Unequal groups are kept as they are (a group of 70 % of the cells is one node): the
contrast is "learn this group or not", whatever its size. Deeper stages cut each
group's range into N parts as without groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hbl_mpi.core.errors import InputError

NA = "NA"
"""The label of the cells that have no value in the column."""
MAX_GROUP_NODES = 16
"""At most max(N, this) stage-1 nodes; beyond it the smallest groups are pooled."""
POOL_SEP = "+"


@dataclass(frozen=True)
class GroupParts:
    """The stage-1 parts of a grouped plan: part ``k`` (0-based) is node ``1.(k+1)``."""

    column: str
    labels: tuple[str, ...]  # per part: a group's value, or pooled values joined by "+"
    part_of_cell: np.ndarray  # int64 (C,): the part of each cell (index into the data's cells)
    cells_per_group: dict  # value -> number of cells (every group, pooled or not)

    def members(self, k: int) -> list[str]:
        """The metadata values in part ``k``."""
        return self.labels[k].split(POOL_SEP) if self.labels[k] not in self.cells_per_group else [self.labels[k]]

    def ranges(self) -> list[tuple[int, int]]:
        """``[lo, hi)`` of each part in the plan's group-sorted cell order (every part has a cell)."""
        ends = np.cumsum(np.bincount(self.part_of_cell, minlength=len(self.labels)))
        starts = np.concatenate([[0], ends[:-1]])
        return [(int(a), int(b)) for a, b in zip(starts, ends)]

    def check(self, stage1: list[str], val_cells) -> None:
        """Plan invariant: each stage-1 node holds out one whole part, a different one each
        (``val_cells``: node -> its cell indices). AssertionError naming the first violation."""
        parts = [set(self.part_of_cell[val_cells(c)].tolist()) for c in stage1]
        assert all(len(p) == 1 for p in parts), "a stage-1 node mixes groups"
        assert len(set().union(*parts)) == len(parts), "two stage-1 nodes hold out one group"
        for c, p in zip(stage1, parts):
            size = int((self.part_of_cell == next(iter(p))).sum())
            assert len(val_cells(c)) == size, f"{c}: not the whole group"


def cell_labels(meta, cell_ids, column: str) -> np.ndarray:
    """Each data cell's value in ``column`` (``NA`` when it has none); InputError when the
    data has no metadata or no such column."""
    where = f"config key 'groups' = {column!r}"
    if meta is None:
        raise InputError(f"{where}: the data has no cell metadata (attach it with `data annotate` or the "
                         "config key cell_metadata)")
    cols = [str(c) for c in meta.columns if c != "cell"]
    if column not in cols:
        raise InputError(f"{where}: no such cell metadata column (columns: {', '.join(cols)})")
    value = dict(zip(meta["cell"].astype(str), meta[column].astype(str)))
    return np.array([value.get(str(c), "") or NA for c in cell_ids], dtype=object)


def group_parts(labels, n: int, column: str = "") -> GroupParts:
    """The rule of the module docstring: per-cell labels -> stage-1 parts."""
    labels = np.asarray(labels, dtype=object)
    values, counts = np.unique(labels.astype(str), return_counts=True)
    sizes = {str(v): int(c) for v, c in zip(values, counts)}
    if len(sizes) < 2:
        raise InputError(f"config key 'groups' = {column!r}: the column has {len(sizes)} group(s) among the "
                         "data's cells; it needs at least 2")
    width = max(n, MAX_GROUP_NODES)
    if len(sizes) <= width:
        solo, pooled = sorted(sizes), []
    else:
        by_size = sorted(sizes, key=lambda v: (-sizes[v], v))
        solo, pooled = sorted(by_size[:width - 1]), sorted(by_size[width - 1:])
    part_labels = solo + ([POOL_SEP.join(pooled)] if pooled else [])
    index = {v: i for i, v in enumerate(solo)}
    index.update({v: len(solo) for v in pooled})
    part_of_cell = np.array([index[str(v)] for v in labels], dtype=np.int64)
    return GroupParts(column, tuple(part_labels), part_of_cell, sizes)


def groups_for(dataset, column: str, n: int) -> GroupParts:
    """A data set's parts for ``groups = column`` (InputError on missing metadata/column or < 2 groups)."""
    return group_parts(cell_labels(dataset.cell_metadata, dataset.cell_ids, column), n, column)
