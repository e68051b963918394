"""docs/design.md §3's invariants of a plan, checked node by node (``plan --check`` and the tests).

Kept apart from ``plan.py``: building a plan never needs them, and they are set operations
per node (slow on a large tree), run only when asked for.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from hbl_mpi.tree.plan import ROOT, Plan, cut, parent_of, stage_of


def _train_units(plan: Plan, name: str) -> np.ndarray:
    """The units ``name`` trains on: its training cells, or every drug outside its block."""
    if plan.unit == "cell":
        return plan.train_cells(name)
    if name == ROOT:
        return np.empty(0, dtype=plan.drug_order.dtype)
    lo, hi = plan.nodes[name].drugs
    return np.concatenate([plan.drug_order[:lo], plan.drug_order[hi:]])


def check_invariants(plan: Plan) -> None:
    """Assert docs/design.md §3's invariants on the partition unit (cells, or drugs for ``drugs``);
    raises AssertionError naming the first violation."""
    n_units = len(plan.drug_ids if plan.unit == "drug" else plan.cell_ids)
    for name, node in plan.nodes.items():
        if name == ROOT:
            continue
        parent = plan.nodes[node.parent]
        assert node.stage == stage_of(name) == parent.stage + 1, f"{name}: stage"
        assert parent_of(name) == node.parent, f"{name}: parent name"
        val = set(plan.val_units(name).tolist())
        pval = set(plan.val_units(parent.name).tolist())
        assert val and val <= pval, f"{name}: val not a non-empty subset of its parent's"
        assert node.n_val_rows > 0, f"{name}: empty validation rows"
        if node.drugs is None or plan.unit == "drug":
            train = set(_train_units(plan, name).tolist())
            assert not (train & val), f"{name}: val {plan.unit}s in train"
            assert train | val == set(range(n_units)), f"{name}: train ∪ val != all {plan.unit}s"
            for anc in plan.ancestors(name):
                assert not (val & set(_train_units(plan, anc).tolist())), f"{name}: val in {anc}'s train"
            assert set(_train_units(plan, parent.name).tolist()) <= train, f"{name}: train shrank"
    for name, node in plan.nodes.items():
        if node.children:
            allc = np.concatenate([plan.val_units(c) for c in node.children])
            assert len(allc) == len(set(allc.tolist())), f"{name}: children overlap"
            span = node.drugs if plan.unit == "drug" else node.cells
            grouped = plan.groups is not None and name == ROOT
            expected = len(plan.groups.labels) if grouped else len(cut(*span, plan.spec.n))
            if all(plan.nodes[c].n_val_rows > 0 for c in node.children) and len(node.children) == expected:
                assert set(allc.tolist()) == set(plan.val_units(name).tolist()), f"{name}: children miss units"
    if plan.groups is not None:
        plan.groups.check(plan.nodes[ROOT].children, plan.val_cells)
    counts = Counter(n.stage for n in plan.nodes.values())
    assert counts[0] == 1, "one root"
