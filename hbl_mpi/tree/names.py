"""Node names and the tree's shape: ``1.3.2`` is the second child of the third child of
the root ``1``. Pure functions of the name, shared by the plan, the scheduler's policy, the
analysis and the checkpoints, so every part agrees on parent, stage and order."""

from __future__ import annotations

SEP = "."

ROOT = "1"


def components(name: str) -> list[int]:
    """``"1.12.3"`` -> ``[1, 12, 3]`` (never by character position: components may exceed 9)."""
    return [int(c) for c in name.split(SEP)]


def stage_of(name: str) -> int:
    """Number of components after the root: ``1.3.2`` is stage 2."""
    return name.count(SEP)


def parent_of(name: str) -> str | None:
    """Drop the last component; the root has no parent."""
    head, sep, _ = name.rpartition(SEP)
    return head if sep else None


def child_name(parent: str, k: int) -> str:
    return f"{parent}{SEP}{k}"


def full_tree(n: int, s: int) -> dict[str, list[str]]:
    """The node tree of an N, S plan without data: node -> children (leaves map to []).

    The shape alone is what the placement policy, its tests and the simulator need.
    """
    children: dict[str, list[str]] = {ROOT: []}
    frontier = [ROOT]
    for _ in range(s):
        nxt = []
        for p in frontier:
            for k in range(1, n + 1):
                c = child_name(p, k)
                children[p].append(c)
                children[c] = []
                nxt.append(c)
        frontier = nxt
    return children


def node_sort_key(name: str) -> tuple:
    """Breadth-first then numeric order: ``1.2`` < ``1.10`` < ``1.1.1``."""
    c = components(name)
    return (len(c), c)


def cut(lo: int, hi: int, n: int) -> list[tuple[int, int]]:
    """Cut ``[lo, hi)`` into ``n`` consecutive parts of ``L // n`` (last takes the rest).

    With ``L < n`` every item is its own part; ``L == 0`` gives no parts.
    """
    length = hi - lo
    if length <= 0:
        return []
    if length < n:
        return [(lo + i, lo + i + 1) for i in range(length)]
    size = length // n
    parts = [(lo + i * size, lo + (i + 1) * size) for i in range(n - 1)]
    parts.append((lo + (n - 1) * size, hi))
    return parts
