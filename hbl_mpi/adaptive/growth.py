"""The adaptive tree's mechanism on the deciding process: apply ``expansion``'s decisions.

``expansion.py`` decides (pure); this module applies the decisions to the plan
(``Plan.grow``/``decline``: the created node set) and to the scheduler's ``TreeState``,
for both drivers (serial and rank 0). Workers need none of it: each builds the full
tree, trains whatever node it is assigned, and keeps the state of any node that has
children in the full tree until rank 0 releases it (rank 0 releases a node the rule
does not expand as soon as its stage's round has run).

On ``--restart`` (``regrow``) the rounds are replayed from the previous run's finished
nodes, so the restarted run grows exactly the uninterrupted run's tree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from hbl_mpi.adaptive.rule import Decision, Expander, ExpansionRule
from hbl_mpi.tree.plan import Plan, node_sort_key


def adaptive_plan(plan: Plan, cfg) -> tuple[Plan, Expander]:
    """The seedling plan (stages 1..expand_full_stages) and its expander; InputError when
    the full stages alone exceed the budget."""
    rule = ExpansionRule.from_config(cfg)
    seed = plan.seedling(rule.full_stages)
    return seed, Expander.for_plan(seed, rule, cfg.epoch_strategy)


def cell_val_frame(node: str, cell_ids, n_rows, mse) -> pd.DataFrame:
    return pd.DataFrame({"node": np.full(len(cell_ids), node, dtype=object),
                         "cell": np.asarray(cell_ids, dtype=object).astype(str),
                         "n_rows": np.asarray(n_rows, dtype=np.int64), "mse": np.asarray(mse, dtype=np.float64)})


def apply(decisions: list[Decision], plan: Plan, tree=None) -> list[str]:
    """Grow/decline the plan (and the tree state) as decided; returns the created nodes."""
    created: list[str] = []
    for d in decisions:
        if d.node in plan.decided:
            continue  # regrown on a restart already
        if d.expand:
            kids = plan.grow(d.node, d.reason)
            created.extend(kids)
        else:
            plan.decline(d.node)
            kids = []
        if tree is not None:
            tree.add_children(d.node, kids)
    return created


def regrow(plan: Plan, expander: Expander, previous) -> None:
    """Restart: replay the rounds from the previous run's done nodes, in breadth-first order
    (a stage's round runs before its children are fed), growing ``plan`` in place."""
    if previous is None or not len(previous.nodes):
        return
    nodes = previous.nodes[previous.nodes["status"] == "done"].drop_duplicates("node", keep="last")
    done = set(nodes["node"].astype(str))
    cv = previous.cell_val.copy()
    cv["node"] = cv["node"].astype(str)
    by_node = {n: g for n, g in cv.groupby("node", sort=False)}
    for name in sorted(done, key=node_sort_key):
        if name not in plan.nodes:
            continue  # its parent's round was not reached (or chose otherwise): not in this tree
        apply(expander.record(name, "done", by_node.get(name)), plan)


def keep_created(previous, plan: Plan):
    """The previous results without nodes the regrown tree does not hold (a restart after a
    failure reruns the failed node, and its round may then choose otherwise)."""
    if previous is None or not len(previous.nodes):
        return previous
    return previous.without(set(previous.nodes["node"]) - set(plan.nodes))


@dataclass
class Growth:
    """One run's adaptive bookkeeping for a driver: feed final nodes, get new nodes."""

    plan: Plan
    expander: Expander
    tree: object  # policy.TreeState
    writer: object = None  # results.ResultsWriter: its plan table follows the tree
    progress: object = None  # progress.Progress: its total follows the tree

    @classmethod
    def of(cls, ctx, tree, writer=None, progress=None) -> "Growth | None":
        """The run's growth (None for a full tree)."""
        if ctx.expander is None:
            return None
        return cls(ctx.plan, ctx.expander, tree, writer, progress)

    def final(self, node: str, status: str, cell_val=None) -> list[str]:
        """``node`` is final; ``cell_val`` = (cell ids, n_rows, mse) of a done node. Returns the
        nodes this creates (ready to place, or waiting for a parent that runs again)."""
        frame = cell_val_frame(node, *cell_val) if cell_val is not None else None
        created = apply(self.expander.record(node, status, frame), self.plan, self.tree)
        if created:
            if self.writer is not None:
                self.writer.plan_frame = self.plan.to_frame()
            if self.progress is not None:
                self.progress.total = len(self.plan)
        return created

    def may_grow(self, node: str) -> bool:
        return self.plan.may_grow(node)
