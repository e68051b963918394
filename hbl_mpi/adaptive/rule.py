"""Adaptive expansion (``expand = "adaptive"``): which finished nodes get children. Pure, no MPI.

Why: most of the N + N² + … + N^S tree holds only ordinary cells. The suspects are
visible early (a planted cell's held-out error is already large at stages 1-2, see
docs/findings/detection.md §2), so a tree that grows only the subtrees holding the most suspicious
cells reaches single-cell resolution where it matters at a fraction of the compute.

The rule, one round per stage s = F, F+1, …, S-1 (F = ``expand_full_stages``; stages
1..F are always created in full):

1. A round runs when every created node of stage s is final (done, failed or skipped)
   and the round of stage s-1 has run: it decides on complete information, so the tree
   never depends on which node happened to finish first (serial, MPI at any rank count
   and a restart grow the same tree).
2. Every cell gets the ranking's score (``expand_score``, a ``ranking.METHODS`` name) from
   every finished node's per-cell validation error so far; a candidate (a done stage-s
   node with children in the full tree) scores the maximum over its validation cells: a
   node is worth splitting when it holds a suspect.
3. With ``expand_suspects = k > 0`` only candidates holding one of the k best-scored
   cells are eligible; with 0 every candidate is.
4. Eligible candidates are taken by score (ties by node name) while their children's
   planned row-epochs *plus a drill reserve* fit what is left of ``expand_budget`` x the
   full tree's planned row-epochs. The reserve is the cost of following one child per
   later stage down to stage S (the mean expansion cost of each later stage, summed):
   a round does not spend on breadth the budget that resolving its suspects to single
   cells will need. What a round reserves and does not spend is there for the next.

Planned row-epochs (epochs planned x training rows) are known before training, so the
budget holds exactly whatever early stopping does. ``Expander`` is the state machine
both drivers feed with finished nodes; ``choose`` is the decision itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from hbl_mpi.core.config import TREE_KEYS  # noqa: F401 (the adaptive tree's keys, defined with the config)
from hbl_mpi.tree.plan import node_sort_key, stage_of

RULE = "suspects"
FULL_STAGES_REASON = "full_stages"


@dataclass(frozen=True)
class ExpansionRule:
    """The adaptive rule's settings (config keys ``expand_*``)."""

    budget: float = 0.25  # fraction of the full tree's planned row-epochs
    full_stages: int = 1
    score: str = "depth_weighted"
    suspects: int = 0  # 0 = no quota: every candidate may be expanded, by score

    @classmethod
    def from_config(cls, cfg) -> "ExpansionRule":
        return cls(cfg.expand_budget, cfg.expand_full_stages, cfg.expand_score, cfg.expand_suspects)


@dataclass(frozen=True)
class Candidate:
    """A done node that may get children: its validation cells and its children's cost."""

    node: str
    cells: tuple[str, ...]
    cost: float  # planned row-epochs of its children


@dataclass(frozen=True)
class Decision:
    """``node`` gets its children (``expand``) or not; ``reason`` is stored as their ``expanded_by``."""

    node: str
    expand: bool
    score: float
    cell: str  # the cell that gave the node its score
    reason: str = ""


def reason_text(score_name: str, score: float, cell: str, node: str) -> str:
    """The ``expanded_by`` of the children of an expanded node: rule, score, value, cell."""
    return f"{RULE}:{score_name}={score:.6g} cell={cell} parent={node}"


def choose(candidates: list[Candidate], cell_score: dict[str, float], budget: float,
           rule: ExpansionRule, reserve: float = 0.0) -> list[Decision]:
    """One round: which candidates get children, in the order they were chosen.

    A candidate is taken when its cost plus ``reserve`` fits in what is left of
    ``budget``. Returns a decision for every candidate (chosen first, by score; then the
    declined, by name). Pure: the same inputs give the same decisions.
    """
    def best(c: Candidate) -> tuple[float, str]:
        if not c.cells:
            return -np.inf, ""
        neg, x = min((-cell_score.get(x, -np.inf), x) for x in c.cells)  # ties: the smaller id
        return float(-neg), x

    scored = {c.node: best(c) for c in candidates}
    eligible = [c for c in candidates if np.isfinite(scored[c.node][0])]
    if rule.suspects > 0:
        pool = sorted({x for c in eligible for x in c.cells if np.isfinite(cell_score.get(x, -np.inf))},
                      key=lambda x: (-cell_score[x], x))
        top = set(pool[:rule.suspects])
        eligible = [c for c in eligible if top & set(c.cells)]
    eligible.sort(key=lambda c: (-scored[c.node][0], node_sort_key(c.node)))
    left = float(budget)
    out: list[Decision] = []
    chosen: set[str] = set()
    for c in eligible:
        if c.cost + reserve <= left:
            left -= c.cost + reserve
            s, x = scored[c.node]
            out.append(Decision(c.node, True, s, x, reason_text(rule.score, s, x, c.node)))
            chosen.add(c.node)
    for c in sorted(candidates, key=lambda c: node_sort_key(c.node)):
        if c.node not in chosen:
            s, x = scored[c.node]
            out.append(Decision(c.node, False, s, x))
    return out


def cell_scores(cell_val: pd.DataFrame, score: str) -> dict[str, float]:
    """The ranking's ``score`` of every cell from the finished nodes' per-cell errors."""
    from hbl_mpi.analysis.ranking import METHODS, cell_stage_table

    if cell_val.empty:
        return {}
    t = cell_stage_table(cell_val)
    if t.empty:
        return {}
    s = METHODS[score](t)
    return {str(k): float(v) for k, v in s.items() if np.isfinite(v)}


@dataclass
class Expander:
    """The adaptive tree's bookkeeping on the deciding process (rank 0, or the serial driver).

    Feed it every final node (``record``); it returns the rounds' decisions as soon as a
    stage is complete and the caller applies them (``Plan.grow``/``decline``, the tree
    state). Built from the seedling plan: ``created`` counts the created nodes per stage.
    """

    rule: ExpansionRule
    stages: int
    cost: dict[str, float]  # planned row-epochs of every node of the full tree
    full_cost: float
    children: dict[str, list[str]]  # the full tree's children
    val_cells: dict[str, tuple[str, ...]]  # every node of the full tree -> its validation cell ids
    created: dict[int, int] = field(default_factory=dict)  # stage -> created nodes
    final: dict[int, int] = field(default_factory=dict)  # stage -> final nodes
    done: dict[int, list[str]] = field(default_factory=dict)  # stage -> done nodes
    spent: float = 0.0  # planned row-epochs of the created nodes
    next_round: int = 0
    recorded: set[str] = field(default_factory=set)
    _cell_val: list[pd.DataFrame] = field(default_factory=list)

    @classmethod
    def for_plan(cls, plan, rule: ExpansionRule, strategy) -> "Expander":
        from hbl_mpi.core.errors import InputError

        cost = plan.planned_row_epochs(strategy, plan.spec.s, full=True)
        full_cost = float(sum(cost.values()))
        full = plan.candidates
        ids = plan.cell_ids
        val_cells = {n: tuple(str(ids[c]) for c in plan.cell_order[v.cells[0]:v.cells[1]])
                     for n, v in full.items()}
        e = cls(rule, plan.spec.s, cost, full_cost, {n: list(v.children) for n, v in full.items()}, val_cells,
                next_round=rule.full_stages)
        for name, node in plan.nodes.items():
            if node.stage > 0:
                e.created[node.stage] = e.created.get(node.stage, 0) + 1
                e.spent += cost[name]
        if e.spent > rule.budget * full_cost * (1 + 1e-12):
            raise InputError(
                f"expand_budget = {rule.budget:g} is {rule.budget * full_cost:.4g} row-epochs, but the "
                f"{rule.full_stages} full stage(s) alone plan {e.spent:.4g} ({e.spent / full_cost:.3g} of the "
                "full tree): raise expand_budget or lower expand_full_stages")
        return e

    @property
    def allowed(self) -> float:
        return self.rule.budget * self.full_cost

    def record(self, node: str, status: str, cell_val: pd.DataFrame | None = None) -> list[Decision]:
        """A created node is final (``done``/``failed``/``skipped``); returns the rounds it completes.

        Idempotent per node (a node run again on a restart reports the same numbers).
        """
        if node in self.recorded:
            return []
        self.recorded.add(node)
        s = stage_of(node)
        self.final[s] = self.final.get(s, 0) + 1
        if status == "done":
            self.done.setdefault(s, []).append(node)
            if cell_val is not None and len(cell_val):
                self._cell_val.append(cell_val)
        out: list[Decision] = []
        while self.next_round < self.stages and self._complete(self.next_round):
            out.extend(self._round(self.next_round))
            self.next_round += 1
        return out

    def reserve(self, stage: int) -> float:
        """Planned row-epochs of following one child per stage from ``stage + 1`` down to S:
        the sum over stages t = s+1..S-1 of the mean cost of expanding a stage-t node."""
        per: dict[int, list[float]] = {}
        for n, kids in self.children.items():
            t = stage_of(n)
            if kids and stage < t < self.stages:
                per.setdefault(t, []).append(sum(self.cost[c] for c in kids))
        return float(sum(np.mean(v) for v in per.values()))

    def _complete(self, stage: int) -> bool:
        return self.final.get(stage, 0) >= self.created.get(stage, 0)

    def _round(self, stage: int) -> list[Decision]:
        cands = [Candidate(n, self.val_cells[n], sum(self.cost[c] for c in self.children[n]))
                 for n in sorted(self.done.get(stage, []), key=node_sort_key) if self.children[n]]
        if not cands:
            return []
        if len(self._cell_val) > 1:
            self._cell_val = [pd.concat(self._cell_val, ignore_index=True)]
        cv = self._cell_val[0] if self._cell_val else pd.DataFrame(columns=["node", "cell", "n_rows", "mse"])
        left = max(0.0, self.allowed - self.spent)
        decisions = choose(cands, cell_scores(cv, self.rule.score), left, self.rule, self.reserve(stage))
        for d in decisions:
            if d.expand:
                kids = self.children[d.node]
                self.spent += sum(self.cost[c] for c in kids)
                self.created[stage + 1] = self.created.get(stage + 1, 0) + len(kids)
        return decisions
