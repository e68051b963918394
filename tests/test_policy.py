"""The scheduling policy and the group layout, tested without MPI."""

import heapq
import random

import pytest

from hbl_mpi.core.errors import InputError
from hbl_mpi.tree.plan import ROOT, full_tree, parent_of
from hbl_mpi.tree.policy import Status, TreeState, place
from hbl_mpi.runtime.topology import group_layout, idle_ranks


def test_stage1_nodes_start_fresh_largest_subtree_first():
    children = full_tree(3, 2)
    children["1.2"].pop()  # 1.2 has a smaller subtree now
    tree = TreeState.from_children(children)
    out = place(tree, [0, 1])
    assert [p.node for p in out] == ["1.1", "1.3"]
    assert all(p.source == "fresh" for p in out)


def test_locality_first_then_transfer_from_holder():
    tree = TreeState.from_children(full_tree(3, 2))
    for n in ("1.1", "1.2", "1.3"):
        tree.mark_running(n)
    tree.mark_done("1.2", group=5)
    out = place(tree, [2, 5, 7])
    by_group = {p.group: p for p in out}
    assert by_group[5].source == "local" and parent_of(by_group[5].node) == "1.2"
    assert by_group[2].source == "group" and by_group[2].source_group == 5
    assert by_group[7].source == "group" and by_group[7].source_group == 5
    assert len({p.node for p in out}) == 3


def test_locality_wins_over_bigger_subtree_elsewhere():
    children = full_tree(2, 3)
    tree = TreeState.from_children(children)
    tree.mark_running("1.1")
    tree.mark_running("1.2")
    tree.mark_done("1.1", group=0)
    tree.mark_running("1.1.1")
    tree.mark_done("1.1.1", group=1)  # small subtree (leaf children), held by group 1
    out = place(tree, [1])
    assert out[0].group == 1 and out[0].source == "local" and out[0].node.startswith("1.1.1.")


def test_same_host_preferred_for_transfers():
    tree = TreeState.from_children(full_tree(2, 2))
    tree.mark_running("1.1")
    tree.mark_running("1.2")
    tree.mark_done("1.1", group=3)
    out = place(tree, [0, 4], group_host={0: 0, 3: 1, 4: 1})
    assert out[0].group == 4 and out[0].source_group == 3


def test_failure_skips_descendants_and_release():
    tree = TreeState.from_children(full_tree(2, 3))
    tree.mark_running("1.1")
    skipped = tree.mark_failed("1.1")
    assert skipped == ["1.1.1", "1.1.2", "1.1.1.1", "1.1.1.2", "1.1.2.1", "1.1.2.2"]
    assert all(tree.status[s] is Status.SKIPPED for s in skipped)
    tree.mark_running("1.2")
    tree.mark_done("1.2", group=0)
    assert tree.releasable() == []
    tree.mark_running("1.2.1")
    tree.mark_running("1.2.2")
    assert tree.releasable() == [("1.2", 0)]
    with pytest.raises(ValueError):
        tree.mark_running("1.2.1")


def simulate(n, s, groups, seed, fail=()):
    """Discrete-event run of the real policy: returns the event log."""
    rng = random.Random(seed)
    tree = TreeState.from_children(full_tree(n, s))
    free = list(range(groups))
    events, now, log, held = [], 0.0, [], {}
    while not tree.finished():
        for p in place(tree, free):
            parent = parent_of(p.node)
            if p.source == "local":
                assert tree.holder[parent] == p.group
            if p.source == "group":
                assert tree.holder[parent] == p.source_group != p.group
            tree.mark_running(p.node)
            free.remove(p.group)
            log.append(("start", now, p.node, p.group, p.source))
            heapq.heappush(events, (now + rng.uniform(0.5, 2.0), p.node, p.group))
        for parent, g in tree.releasable():
            tree.release(parent)
            held.pop(parent, None)
        if tree.finished():
            break
        assert events, "stalled"
        now, node, g = heapq.heappop(events)
        free.append(g)
        if node in fail:
            tree.mark_failed(node)
        else:
            tree.mark_done(node, g)
            if tree.children[node]:
                held[node] = g
        log.append(("stop", now, node, g, ""))
    return tree, log, held


@pytest.mark.parametrize("groups", [1, 2, 3, 7, 40])
def test_simulated_run_covers_every_node_once(groups):
    tree, log, held = simulate(3, 3, groups, seed=groups)
    starts = [e[2] for e in log if e[0] == "start"]
    assert sorted(starts) == sorted(n for n in tree.children if n != ROOT)
    stop_time = {e[2]: e[1] for e in log if e[0] == "stop"}
    start_time = {e[2]: e[1] for e in log if e[0] == "start"}
    for node in starts:
        p = parent_of(node)
        if p != ROOT:
            assert start_time[node] >= stop_time[p]
    running = {}
    for kind, _, node, g, _ in log:  # a group never runs two nodes at once
        if kind == "start":
            assert g not in running
            running[g] = node
        else:
            assert running.pop(g) == node
    assert not tree.holder and not held  # every held state was released
    if groups == 1:
        assert all(e[4] in ("fresh", "local") for e in log if e[0] == "start")


def test_simulated_failure_skips_subtree():
    tree, log, _ = simulate(2, 3, 2, seed=1, fail={"1.2"})
    c = tree.counts()
    assert c["failed"] == 1 and c["skipped"] == 6 and c["done"] == 14 - 7


def test_group_layout():
    assert group_layout([0, 0, 0, 0, 0], 2) == [[1, 2], [3, 4]]
    assert group_layout([0, 0, 0, 1, 1, 1, 1], 2) == [[1, 2], [3, 4], [5, 6]]
    assert group_layout([0, 0, 0], 1) == [[1], [2]]
    # rank 0's host: one slot short of a whole group -> the leftover rank idles
    assert group_layout([0, 0, 0, 0, 1, 1, 1, 1], 2) == [[1, 2], [4, 5], [6, 7]]
    assert idle_ranks([0, 0, 0, 0, 1, 1, 1, 1], [[1, 2], [4, 5], [6, 7]]) == [3]
    with pytest.raises(InputError, match="does not divide"):
        group_layout([0, 0, 0, 1, 1, 1], 2)  # host 1 has 3 workers
    with pytest.raises(InputError, match="does not divide"):
        group_layout([0, 0, 0, 0, 0, 0], 4)
    with pytest.raises(InputError, match="at least 2 ranks"):
        group_layout([0], 1)


def test_poll_cap_follows_node_times_within_bounds():
    from hbl_mpi.tree.policy import POLL_CAP_MAX_S, POLL_CAP_MIN_S, poll_cap

    assert poll_cap([]) == POLL_CAP_MIN_S  # nothing finished yet: react fast
    assert poll_cap([0.01, 0.02, 0.05]) == POLL_CAP_MIN_S  # sub-second nodes: the floor
    assert poll_cap([0.4, 0.5, 0.6]) == pytest.approx(0.005)  # 1 % of the median
    assert poll_cap([0.5, 30.0, 40.0]) == POLL_CAP_MAX_S  # long nodes: the ceiling
    assert poll_cap([0.3, 0.3, 0.3, 100.0]) == pytest.approx(0.003)  # the median, not the mean
