"""docs/design.md §3's invariants of a plan, checked node by node (``plan --check`` and the tests).

Kept apart from ``plan.py``: building a plan never needs them, and they are set operations
per node (slow on a large tree), run only when asked for.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from hbl_mpi.tree.plan import ROOT, Plan, cut, parent_of, stage_of


def check_invariants(plan: Plan) -> None:
    """Assert docs/design.md §3's invariants on the partition unit (cells, or drugs for ``drugs``);
    raises AssertionError naming the first violation."""
    n_units = len(plan.unit_ids())
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
            train = set(plan.train_units(name).tolist())
            assert not (train & val), f"{name}: val {plan.unit}s in train"
            assert train | val == set(range(n_units)), f"{name}: train ∪ val != all {plan.unit}s"
            for anc in plan.ancestors(name):
                assert not (val & set(plan.train_units(anc).tolist())), f"{name}: val in {anc}'s train"
            assert set(plan.train_units(parent.name).tolist()) <= train, f"{name}: train shrank"
    for name, node in plan.nodes.items():
        if node.children:
            allc = np.concatenate([plan.val_units(c) for c in node.children])
            assert len(allc) == len(set(allc.tolist())), f"{name}: children overlap"
            span = node.drugs if plan.unit == "drug" else node.cells
            if all(plan.nodes[c].n_val_rows > 0 for c in node.children) and len(node.children) == len(
                cut(*span, plan.spec.n)
            ):
                assert set(allc.tolist()) == set(plan.val_units(name).tolist()), f"{name}: children miss units"
    counts = Counter(n.stage for n in plan.nodes.values())
    assert counts[0] == 1, "one root"
