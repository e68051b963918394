"""Scheduling policy: which ready node runs on which free group. Pure, no MPI.

The scheduler's *mechanism* (messages, buffers, MPI) lives in ``scheduler.py`` and
``worker.py``; this module only decides. It is a plain state machine over the plan's
node tree plus one function, ``place``, so the policy can be tested, simulated
(``bench/simulate.py`` drives this exact code at Summit scale) and changed alone.

Rules (docs/design.md §5):
1. locality first: a free group that holds a parent's state takes a ready child of that
   parent (zero transfer; the "fork in place");
2. otherwise the ready node with the largest remaining subtree goes first (it has the
   longest chain of work behind it), preferring a free group on the holder's host.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from hbl_mpi.tree.plan import ROOT, node_sort_key, parent_of


class Status(str, Enum):
    WAITING = "waiting"  # parent not done yet
    READY = "ready"  # parent done (or root child), not placed
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"  # an ancestor failed


FINAL = (Status.DONE, Status.FAILED, Status.SKIPPED)


class Source(str, Enum):
    """Where a node's initial state comes from (the ``source`` column of results.h5)."""

    FRESH = "fresh"  # stage 1: the seeded initial state
    LOCAL = "local"  # the group already holds the parent's state (fork in place)
    GROUP = "group"  # receive the parent's state from the group holding it
    CHECKPOINT = "checkpoint"  # restart: nobody holds it in memory; load the parent's checkpoint


@dataclass(frozen=True)
class Placement:
    """Run ``node`` on ``group``; its initial state comes from ``source`` (``source_group``
    holds it when the source is ``Source.GROUP``)."""

    node: str
    group: int
    source: Source
    source_group: int | None = None


@dataclass
class TreeState:
    """Status of every node and who holds which finished parent's state."""

    children: dict[str, list[str]]  # every node incl. the root -> its children
    status: dict[str, Status] = field(default_factory=dict)
    holder: dict[str, int] = field(default_factory=dict)  # finished parent -> group holding its state
    unplaced_children: dict[str, int] = field(default_factory=dict)  # parent -> children not yet placed
    subtree: dict[str, int] = field(default_factory=dict)
    priority: dict[str, tuple] = field(default_factory=dict)  # sort key: biggest subtree first
    undecided: set[str] = field(default_factory=set)  # adaptive: done, children not decided yet
    _ready: set[str] = field(default_factory=set)
    _counts: dict[Status, int] = field(default_factory=dict)

    @classmethod
    def from_children(cls, children: dict[str, list[str]]) -> "TreeState":
        t = cls(children={k: list(v) for k, v in children.items()})
        for name in reversed(sorted(t.children, key=node_sort_key)):
            t.subtree[name] = 1 + sum(t.subtree[c] for c in t.children[name])
            t.priority[name] = (-t.subtree[name], node_sort_key(name))
        t._counts = {s: 0 for s in Status}
        for name in t.children:
            if name != ROOT:
                t._set(name, Status.READY if parent_of(name) == ROOT else Status.WAITING)
        t.unplaced_children = {n: len(c) for n, c in t.children.items()}
        return t

    def _set(self, node: str, status: Status) -> None:
        """Every status change goes through here, keeping ready set and counts current
        (O(1) per event: rank 0 must stay cheap on trees of thousands of nodes)."""
        old = self.status.get(node)
        if old is not None:
            self._counts[old] -= 1
            if old is Status.READY:
                self._ready.discard(node)
        self.status[node] = status
        self._counts[status] += 1
        if status is Status.READY:
            self._ready.add(node)

    @classmethod
    def from_plan(cls, plan, done_before=()) -> "TreeState":
        """The plan's tree; a restart's ``done_before`` nodes (finished in an earlier run)
        start done, with nobody holding their state: their children load checkpoints."""
        t = cls.from_children({n: list(v.children) for n, v in plan.nodes.items()})
        for node in sorted(done_before, key=node_sort_key):
            if node in t.status:
                t.restore_done(node)
        return t

    # ---- queries ---------------------------------------------------------
    def ready(self) -> list[str]:
        return list(self._ready)

    def counts(self) -> dict[str, int]:
        return {s.value: n for s, n in self._counts.items()}

    def remaining(self) -> int:
        return sum(n for s, n in self._counts.items() if s not in FINAL)

    def finished(self) -> bool:
        return self.remaining() == 0

    # ---- transitions -----------------------------------------------------
    def _expect(self, node: str, *allowed: Status) -> None:
        if self.status.get(node) not in allowed:
            raise ValueError(f"node {node}: status {self.status.get(node)}, expected {allowed}")

    def mark_running(self, node: str) -> None:
        self._expect(node, Status.READY)
        self._set(node, Status.RUNNING)
        self.unplaced_children[parent_of(node)] -= 1

    def mark_done(self, node: str, group: int | None, may_grow: bool = False,
                  holds: bool | None = None) -> None:
        """Node finished on ``group``, which now holds its state (if it has children, or
        ``may_grow``: an adaptive node whose children are decided later, see ``add_children``;
        ``holds`` overrides whether the group kept the state)."""
        self._expect(node, Status.RUNNING, Status.READY)
        if self.status[node] is Status.READY:  # restart: finished in an earlier run
            self.unplaced_children[parent_of(node)] -= 1
        self._set(node, Status.DONE)
        if may_grow:
            self.undecided.add(node)
        if (self.children[node] or may_grow) if holds is None else holds:
            if group is not None:
                self.holder[node] = group
            for c in self.children[node]:
                if self.status[c] is Status.WAITING:  # (a restart's finished child stays done)
                    self._set(c, Status.READY)

    def restore_done(self, node: str) -> None:
        """Restart: ``node`` finished in an earlier run; nobody holds its state in memory.

        Call parents before children. A finished node may sit under a parent that runs
        again (the parent's state was lost with no checkpoint): it stays done, and its
        own children take its state from its checkpoint, not from the rerun parent.
        """
        self._expect(node, Status.READY, Status.WAITING)
        self.unplaced_children[parent_of(node)] -= 1
        self._set(node, Status.DONE)
        for c in self.children[node]:
            if self.status[c] is Status.WAITING:
                self._set(c, Status.READY)

    def mark_failed(self, node: str) -> list[str]:
        """Node failed: every descendant that needs it is skipped. Returns the skipped names.

        A descendant that finished in an earlier run (restart) is not skipped, and neither
        is its subtree: it gets its state from its own checkpoint.
        """
        self._expect(node, Status.RUNNING, Status.READY)
        if self.status[node] is Status.READY:
            self.unplaced_children[parent_of(node)] -= 1
        self._set(node, Status.FAILED)
        skipped = []
        stack = list(self.children[node])
        while stack:
            c = stack.pop()
            if self.status[c] is Status.DONE:
                continue
            self._set(c, Status.SKIPPED)
            skipped.append(c)
            stack.extend(self.children[c])
        return sorted(skipped, key=node_sort_key)

    def add_children(self, parent: str, children: list[str]) -> None:
        """Adaptive expansion: ``parent`` gets ``children`` (ready at once when it is done;
        on a restart it may be running again); an empty list says it gets none (its held
        state becomes releasable)."""
        self.undecided.discard(parent)
        if not children:
            return
        ready = self.status[parent] is Status.DONE
        self.children[parent] = list(children)
        self.unplaced_children[parent] += len(children)
        for c in children:
            self.children[c] = []
            self.unplaced_children[c] = 0
            self.subtree[c] = 1
            self.priority[c] = (-1, node_sort_key(c))
            self._set(c, Status.READY if ready else Status.WAITING)

    def releasable(self) -> list[tuple[str, int]]:
        """Held parents all of whose children are placed: (parent, holder group)."""
        return [(p, g) for p, g in self.holder.items()
                if self.unplaced_children[p] == 0 and p not in self.undecided]

    def hold(self, parent: str, group: int) -> None:
        """``group`` holds finished ``parent``'s state from now on (the serial driver, after
        loading it from the parent's checkpoint: its other children fork in place)."""
        self._expect(parent, Status.DONE)
        self.holder[parent] = group

    def release(self, parent: str) -> int:
        return self.holder.pop(parent)


def source_for(tree: TreeState, node: str, group: int) -> Placement:
    """``node`` on ``group``: where its initial state comes from (who holds the parent's)."""
    parent = parent_of(node)
    if parent == ROOT:
        return Placement(node, group, Source.FRESH)
    holder = tree.holder.get(parent)
    if holder is None:
        return Placement(node, group, Source.CHECKPOINT)
    if holder == group:
        return Placement(node, group, Source.LOCAL)
    return Placement(node, group, Source.GROUP, holder)


def place(
    tree: TreeState,
    free_groups: list[int],
    group_host: dict[int, int] | None = None,
) -> list[Placement]:
    """Decide placements for the free groups (at most one node each). Pure: no mutation."""
    if not tree._ready or not free_groups:
        return []
    taken: set[str] = set()
    out: list[Placement] = []
    free = list(free_groups)

    # 1. locality: a free group holding a parent takes that parent's biggest ready child
    # (visit only holders, not every free group: Summit has ~27,000 groups)
    held_by: dict[int, list[str]] = {}
    for parent, g in tree.holder.items():
        held_by.setdefault(g, []).append(parent)
    free_set = set(free)
    used: set[int] = set()
    for g in sorted(held_by):
        if g not in free_set:
            continue
        candidates = [c for p in held_by[g] for c in tree.children[p]
                      if c in tree._ready and c not in taken]
        if candidates:
            node = min(candidates, key=tree.priority.__getitem__)
            out.append(source_for(tree, node, g))
            taken.add(node)
            used.add(g)
    if used:
        free = [g for g in free if g not in used]
    # 2. the rest: largest remaining subtree first, on the holder's host when possible
    # (only the best len(free) + len(taken) candidates can be needed: no full sort;
    # groups are taken from deques so a call is O(free + ready), not O(free * ready))
    ready = heapq.nsmallest(len(free) + len(taken), tree._ready, key=tree.priority.__getitem__)
    order = deque(free)
    by_host: dict[int, deque] = {}
    if group_host is not None:
        for g in free:
            by_host.setdefault(group_host.get(g), deque()).append(g)
    gone: set[int] = set()

    def take(queue: deque | None) -> int | None:
        while queue:
            g = queue.popleft()
            if g not in gone:
                gone.add(g)
                return g
        return None

    for node in ready:
        if len(gone) == len(free):
            break
        if node in taken:
            continue
        holder = tree.holder.get(parent_of(node))
        g = None
        if group_host is not None and holder is not None:
            g = take(by_host.get(group_host.get(holder)))
        if g is None:
            g = take(order)
        out.append(source_for(tree, node, g))
        taken.add(node)
    return out


POLL_CAP_FRACTION = 0.01
POLL_CAP_MIN_S = 1e-3
POLL_CAP_MAX_S = 10e-3


def poll_cap(recent_task_seconds: list[float]) -> float:
    """Rank 0's longest sleep between polls for reports, from how long nodes take.

    A report waits up to one cap before rank 0 sees it, and the reporting group idles
    meanwhile, so the cap costs about cap / task time of the makespan; each wake-up costs
    rank 0 CPU, so a short cap on long nodes burns its 5 % budget for nothing. The cap is
    1 % of the median recent node time, kept within [1 ms, 10 ms]: 1 ms (the workers'
    cap, mpi4py.futures') until a node has finished and for sub-second nodes, 10 ms once
    nodes take a second or more (then 100 wake-ups/s at most, and < 1 % of a node).
    """
    if not recent_task_seconds:
        return POLL_CAP_MIN_S
    s = sorted(recent_task_seconds)
    median = s[len(s) // 2]
    return min(POLL_CAP_MAX_S, max(POLL_CAP_MIN_S, POLL_CAP_FRACTION * median))
