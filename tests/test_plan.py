"""The sublearning plan (docs/design.md §3) against an independent reference, and `hbl_mpi plan`.

The reference below re-derives every node from the spec's words (cut the parent's
validation list into N parts of L // N, the last taking the rest; L < N -> one item per
part; a node with no validation rows is not created), starting from the plan's global
order. Everything else is read back from plan.csv, never from the planner's own
internals, so a planner bug cannot hide behind its own bookkeeping.
"""

from __future__ import annotations

import os
import re
import tempfile
import time

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hbl_mpi.__main__ import main
from hbl_mpi.data import read_uno, synthesize, write_uno
from hbl_mpi.core.errors import InputError
from hbl_mpi.tree.invariants import check_invariants
from hbl_mpi.tree.plan import (
    ROOT, PlanSpec, build_plan, node_sort_key, parent_of, plan_for, stage_of,
)

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------- helpers --

def tiny_dataset(cells: int, drugs: int = 6, seed: int = 0, **kw):
    """A synthetic data set with minimal feature widths: the plan only needs ids and rows."""
    return synthesize("small", seed=seed, cells=cells, drugs=drugs, cell_features=4, descriptors=4,
                      fingerprints=0, **kw)


def read_plan_csv(path) -> pd.DataFrame:
    # dtype=str: node "1.10" must not become the float 1.1, cell "007" must stay "007"
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(df.columns) == ["node", "parent", "stage", "cell", "role"]
    return df


def plan_csv(plan) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "plan.csv")
        n = plan.write_csv(path)
        df = read_plan_csv(path)
    assert n == len(df)
    return df


def reference_tree(order_ids: list, n: int, s: int, rows_per_cell: dict) -> dict[str, list]:
    """docs/design.md §3 literally: node name -> its validation cell ids (in plan order)."""
    out = {}
    frontier = [(ROOT, list(order_ids))]
    for _stage in range(1, s + 1):
        nxt = []
        for name, val in frontier:
            L = len(val)
            if L < n:
                parts = [[c] for c in val]
            else:
                size = L // n
                parts = [val[i * size:(i + 1) * size] for i in range(n - 1)] + [val[(n - 1) * size:]]
            for k, part in enumerate(parts, start=1):
                if sum(rows_per_cell.get(c, 0) for c in part) == 0:
                    continue  # empty validation set: the node is not created
                child = f"{name}.{k}"
                out[child] = part
                nxt.append((child, part))
        frontier = nxt
    return out


def check_against_reference(plan, cell_ids, cell_index, drug_index, spec):
    """Every docs/design.md §3 property, from plan.csv and plan.rows()."""
    all_cells = set(cell_ids)
    index_of = {c: i for i, c in enumerate(cell_ids)}
    R = len(cell_index)
    # holdout: a fixed fraction of rows
    holdout = plan.holdout
    assert holdout.dtype == bool and len(holdout) == R
    assert holdout.sum() == int(round(spec.holdout_fraction * R))
    kept = ~holdout
    rows_per_cell = pd.Series(np.asarray(cell_ids, dtype=object)[cell_index[kept]]).value_counts().to_dict()

    order_ids = [cell_ids[i] for i in plan.cell_order]
    assert sorted(order_ids) == sorted(cell_ids), "global order is not a permutation of the cells"
    if spec.order == "ordered":
        assert order_ids == sorted(cell_ids, key=str)

    ref = reference_tree(order_ids, spec.n, spec.s, rows_per_cell)
    df = plan_csv(plan)
    assert set(df["node"]) <= set(ref)  # nodes without any csv row can only be nodes with empty val
    assert sorted(plan.trained_nodes(), key=node_sort_key) == sorted(ref, key=node_sort_key)
    assert plan.trained_nodes() == sorted(ref, key=node_sort_key), "nodes not in breadth-first order"
    assert len(plan) == len(ref)

    assert set(df["role"]) <= {"val", "train_added"}
    val, added, meta = {}, {}, {}
    for node, parent, stage, cell, role in df.itertuples(index=False):
        (val if role == "val" else added).setdefault(node, set()).add(cell)
        assert meta.setdefault(node, (parent, stage)) == (parent, stage), f"{node}: parent/stage differ"
    n_val_rows = df[df.role == "val"].groupby("node").size().to_dict()
    val[ROOT], train = all_cells, {ROOT: set()}

    ref_order = sorted(ref, key=node_sort_key)
    for name in ref_order:
        parent = parent_of(name)
        assert meta[name] == (parent, str(stage_of(name))) and stage_of(name) == name.count(".")
        # the validation list is exactly the reference's part
        assert val[name] == set(ref[name]) and n_val_rows[name] == len(ref[name])
        assert val[name] and val[name] <= val[parent], f"{name}: val not inside parent's val"
        # train(node) = union of train_added over the node and its ancestors
        train[name] = train[parent] | added.get(name, set())
        assert added.get(name, set()) == val[parent] - val[name]
        assert train[parent] <= train[name], f"{name}: train shrank"
        assert not (val[name] & train[name]), f"{name}: val cells in train"
        assert train[name] | val[name] == all_cells
        a = parent
        while a is not None:
            assert not (val[name] & train[a]), f"{name}: val cell was in ancestor {a}'s train"
            a = parent_of(a)
        assert set(map(str, np.asarray(cell_ids, dtype=object)[plan.train_cells(name)])) == train[name]

        # rows: val = non-holdout rows of val cells, train = the other non-holdout rows,
        # test = the holdout; so the three are disjoint and cover every row
        r = plan.rows(name)
        in_val = np.isin(cell_index, [index_of[c] for c in val[name]])
        assert np.array_equal(r.val, np.flatnonzero(kept & in_val))
        assert np.array_equal(r.train, np.flatnonzero(kept & ~in_val))
        assert np.array_equal(r.test, np.flatnonzero(holdout))
        assert len(r.val) > 0, f"{name}: created with no validation rows"
        assert len(r.val) + len(r.train) + len(r.test) == R
    # children per node: one per non-empty part, so L < N gives fewer than N children
    children = {ROOT: []}
    for name in ref_order:
        children.setdefault(parent_of(name), []).append(name)
    for name, node in plan.nodes.items():
        assert len(node.children) <= spec.n
        assert node.children == children.get(name, [])
    check_invariants(plan)
    return df


def raw_plan(cell_ids, drug_ids, cell_index, drug_index, **spec):
    sp = PlanSpec(**spec)
    return build_plan(cell_ids, drug_ids, cell_index, drug_index, sp), sp


def useful_depth(cell_ids, drug_ids, cell_index, drug_index, **spec) -> dict:
    """``spec`` with ``s`` lowered to the largest useful depth when the plan refuses a deeper
    one (issue 28: deeper stages only repeat single-unit nodes), after checking that claim:
    the plan at that depth builds, and every node of its last stage validates on one cell
    (and one drug, crossed). Unchanged when the plan accepts ``s``."""
    try:
        raw_plan(cell_ids, drug_ids, cell_index, drug_index, **spec)
        return spec
    except InputError as e:
        m = re.search(r"the largest useful s is (\d+)", str(e))
        if m is None:
            return spec  # another refusal: the property test checks it
    k = int(m.group(1))
    assert 1 <= k < spec["s"]
    lower = {**spec, "s": k}
    try:
        plan, _ = raw_plan(cell_ids, drug_ids, cell_index, drug_index, **lower)
    except InputError as e:
        assert "deeper than the data allows" not in str(e), e
        return lower
    last = [plan.nodes[n] for n in plan.trained_nodes() if plan.nodes[n].stage == k]
    assert last and all(len(plan.val_cells(n.name)) == 1 for n in last)
    if spec.get("partition") == "cells+drugs":
        assert all(len(plan.val_drugs(n.name)) == 1 for n in last)
    return lower


def lacks_training_rows(cell_ids, drug_ids, cell_index, drug_index, **spec) -> bool:
    """Whether the plan is refused for a node without training rows, checked against the
    plan built without that check: some trained node's ``rows().train`` is then empty."""
    import hbl_mpi.tree.plan as P

    try:
        raw_plan(cell_ids, drug_ids, cell_index, drug_index, **spec)
        return False
    except InputError as e:
        if "have no training rows" not in str(e):
            raise
    check, P._check_training_rows = P._check_training_rows, lambda *a: None
    try:
        plan, _ = raw_plan(cell_ids, drug_ids, cell_index, drug_index, **spec)
    finally:
        P._check_training_rows = check
    assert any(len(plan.rows(n).train) == 0 for n in plan.trained_nodes()), "refused a plan that trains"
    return True


# ------------------------------------------------------- property-based --

@st.composite
def plan_inputs(draw):
    n = draw(st.integers(2, 12))
    s = draw(st.integers(1, 4))
    n_cells = draw(st.integers(n, 70))
    n_drugs = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # some cells get no rows at all (-> nodes with an empty validation set)
    weights = rng.random(n_cells) * (rng.random(n_cells) > draw(st.sampled_from([0.0, 0.3, 0.7])))
    R = draw(st.integers(0, 150))
    if weights.sum() == 0:
        weights[:] = 1.0
    cell_index = rng.choice(n_cells, size=R, p=weights / weights.sum())
    drug_index = rng.integers(0, n_drugs, size=R)
    # ids whose string order differs from index order and that are not all numeric-looking
    cell_ids = np.array([f"c{(i * 7919) % 1000:03d}_{i}" for i in range(n_cells)], dtype=object)
    drug_ids = np.array([f"d{i}" for i in range(n_drugs)], dtype=object)
    spec = dict(n=n, s=s, order=draw(st.sampled_from(["shuffled", "ordered"])), seed=draw(st.integers(0, 10**6)),
                holdout_fraction=draw(st.sampled_from([0.0, 0.1, 0.3])))
    return cell_ids, drug_ids, cell_index, drug_index, spec


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan_inputs())
def test_plan_matches_spec_property(inputs):
    cell_ids, drug_ids, cell_index, drug_index, spec = inputs
    if round(spec["holdout_fraction"] * len(cell_index)) == len(cell_index):  # nothing left to train on
        with pytest.raises(InputError, match="no response rows"):
            raw_plan(cell_ids, drug_ids, cell_index, drug_index, **spec)
        return
    spec = useful_depth(cell_ids, drug_ids, cell_index, drug_index, **spec)
    if lacks_training_rows(cell_ids, drug_ids, cell_index, drug_index, **spec):
        return
    plan, sp = raw_plan(cell_ids, drug_ids, cell_index, drug_index, **spec)
    assert all(len(plan.rows(n).train) for n in plan.trained_nodes())
    check_against_reference(plan, list(cell_ids), cell_index, drug_index, sp)
    # a pure function of its inputs
    again, _ = raw_plan(cell_ids, drug_ids, cell_index, drug_index, **spec)
    assert plan_csv(again).equals(plan_csv(plan))
    assert np.array_equal(again.holdout, plan.holdout)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan_inputs())
def test_crossed_partition_property(inputs):
    cell_ids, drug_ids, cell_index, drug_index, spec = inputs
    if round(spec["holdout_fraction"] * len(cell_index)) == len(cell_index):
        return  # no rows at all: covered by test_plan_matches_spec_property
    if spec["n"] > len(drug_ids):
        with pytest.raises(InputError, match="drugs"):
            raw_plan(cell_ids, drug_ids, cell_index, drug_index, partition="cells+drugs", **spec)
        return
    spec = useful_depth(cell_ids, drug_ids, cell_index, drug_index, partition="cells+drugs", **spec)
    spec.pop("partition")
    if lacks_training_rows(cell_ids, drug_ids, cell_index, drug_index, partition="cells+drugs", **spec):
        return
    plan, sp = raw_plan(cell_ids, drug_ids, cell_index, drug_index, partition="cells+drugs", **spec)
    check_crossed(plan, cell_ids, drug_ids, cell_index, drug_index)


def check_crossed(plan, cell_ids, drug_ids, cell_index, drug_index):
    df = plan_csv(plan)
    assert set(df["role"]) <= {"val", "val_drug"}
    R = len(cell_index)
    row_cell = np.asarray(cell_ids, dtype=object)[cell_index]
    row_drug = np.asarray(drug_ids, dtype=object)[drug_index]
    kept = ~plan.holdout
    vc = {n: set(g.loc[g.role == "val", "cell"]) for n, g in df.groupby("node")}
    vd = {n: set(g.loc[g.role == "val_drug", "cell"]) for n, g in df.groupby("node")}
    vc[ROOT], vd[ROOT] = set(cell_ids), set(drug_ids)
    for name in plan.trained_nodes():
        parent = parent_of(name)
        assert vc[name] and vc[name] <= vc[parent]
        assert vd[name] and vd[name] <= vd[parent]
        r = plan.rows(name)
        block = {i for i in range(R) if kept[i] and row_cell[i] in vc[name] and row_drug[i] in vd[name]}
        assert set(r.val.tolist()) == block and block, f"{name}: val rows are not the (cells x drugs) block"
        assert set(r.train.tolist()) == {i for i in range(R) if kept[i]} - block
        assert set(r.test.tolist()) == set(np.flatnonzero(plan.holdout).tolist())
        # a child's block never was in any ancestor's training rows
        a = parent
        while a is not None and a != ROOT:
            assert not (block & set(plan.rows(a).train.tolist()))
            a = parent_of(a)
    for name, node in plan.nodes.items():
        if node.children:
            kids = [(vc[c], vd[c]) for c in node.children]
            for i, (c1, d1) in enumerate(kids):
                for c2, d2 in kids[i + 1:]:
                    assert not (c1 & c2) and not (d1 & d2), f"{name}: children blocks overlap"
    check_invariants(plan)


# ------------------------------------------------------------ fixed cases --

def test_paper_shape_1364_nodes_under_a_second():
    ds = tiny_dataset(cells=1024, drugs=12, seed=3)
    assert ds.n_cells >= 1024
    spec = PlanSpec(n=4, s=5, order="shuffled", seed=7)
    plan_for(ds, spec)  # warm-up (imports, allocator)
    t0 = time.perf_counter()
    plan = plan_for(ds, spec)
    seconds = time.perf_counter() - t0
    print(f"\nN=4 S=5 plan over {ds.n_cells} cells, {ds.n_rows} rows: {len(plan)} nodes in {seconds * 1e3:.1f} ms")
    assert len(plan) == 4 + 16 + 64 + 256 + 1024 == 1364
    assert seconds < 5.0  # 7 ms measured on the 2-core dev box; loose bound for a loaded CI box
    summary = plan.stage_summary()
    assert [row["nodes"] for row in summary] == [4, 16, 64, 256, 1024]
    assert [row["mean_val_cells"] for row in summary] == [256, 64, 16, 4, 1]
    assert [row["mean_train_cells"] for row in summary] == [768, 960, 1008, 1020, 1023]
    # each leaf holds out exactly one cell line
    leaves = [n for n, v in plan.nodes.items() if v.stage == 5]
    assert all(len(plan.val_cells(n)) == 1 for n in leaves)
    check_against_reference(plan, list(ds.cell_ids), ds.cell_index, ds.drug_index, spec)


def test_same_inputs_same_plan_and_seed_matters():
    ds = tiny_dataset(cells=200, seed=1)
    spec = PlanSpec(n=3, s=3, seed=11)
    a, b = plan_for(ds, spec), plan_for(tiny_dataset(cells=200, seed=1), spec)
    assert a.to_frame().equals(b.to_frame())
    assert np.array_equal(a.holdout, b.holdout)
    for name in a.trained_nodes():
        ra, rb = a.rows(name), b.rows(name)
        assert np.array_equal(ra.train, rb.train) and np.array_equal(ra.val, rb.val)
    other = plan_for(ds, PlanSpec(n=3, s=3, seed=12))
    assert not np.array_equal(other.cell_order, a.cell_order)
    assert not np.array_equal(other.holdout, a.holdout)
    # ordered ignores the seed for the partition (the holdout rows still follow it)
    o1 = plan_for(ds, PlanSpec(n=3, s=3, order="ordered", seed=1))
    o2 = plan_for(ds, PlanSpec(n=3, s=3, order="ordered", seed=2))
    assert np.array_equal(o1.cell_order, o2.cell_order)
    assert list(o1.cell_ids[o1.val_cells("1.1")]) == sorted(ds.cell_ids)[: 200 // 3]


def test_node_names_beyond_nine():
    assert stage_of("1.12.3") == 2 and parent_of("1.12.3") == "1.12" and parent_of(ROOT) is None
    assert sorted(["1.1.1", "1.10", "1.2", "1.11.2", "1.11.10"], key=node_sort_key) == [
        "1.2", "1.10", "1.1.1", "1.11.2", "1.11.10"]
    ds = tiny_dataset(cells=150, drugs=8, seed=2)
    plan = plan_for(ds, PlanSpec(n=12, s=2, seed=5))
    assert "1.12" in plan.nodes and "1.10.12" in plan.nodes and "1.1.12" in plan.nodes
    df = check_against_reference(plan, list(ds.cell_ids), ds.cell_index, ds.drug_index, plan.spec)
    assert {"1.1", "1.10", "1.11", "1.12"} <= set(df["node"])
    assert set(df.loc[df.node == "1.10.3", "parent"]) == {"1.10"}


def test_fewer_children_when_parent_val_is_smaller_than_n():
    # 10 cells, N=4: stage 1 cuts 2,2,2,4; the 2-cell nodes get 2 children, the 4-cell node 4
    ds = tiny_dataset(cells=10, drugs=20, seed=4, density=1.0)
    plan = plan_for(ds, PlanSpec(n=4, s=2, order="ordered", holdout_fraction=0.0))
    assert [len(plan.val_cells(f"1.{k}")) for k in range(1, 5)] == [2, 2, 2, 4]
    assert [len(plan.nodes[f"1.{k}"].children) for k in range(1, 5)] == [2, 2, 2, 4]
    assert "1.1.3" not in plan.nodes
    # every stage-2 node validates on one cell: a third stage would only repeat them (issue 28)
    with pytest.raises(InputError, match="at stage 2 every validation set is a single cell.*largest useful s is 2"):
        plan_for(ds, PlanSpec(n=4, s=3, order="ordered", holdout_fraction=0.0))
    check_against_reference(plan, list(ds.cell_ids), ds.cell_index, ds.drug_index, plan.spec)


def test_node_with_empty_validation_set_is_not_created():
    cell_ids = np.array([f"c{i}" for i in range(8)], dtype=object)
    drug_ids = np.array(["d0", "d1"], dtype=object)
    # cells c2 and c3 have no rows: with ordered N=4, node 1.2 = {c2, c3} is empty
    cells = np.array([0, 0, 1, 4, 5, 6, 7, 7])
    drugs = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    plan, spec = raw_plan(cell_ids, drug_ids, cells, drugs, n=4, s=2, order="ordered", holdout_fraction=0.0)
    assert "1.2" not in plan.nodes and plan.nodes[ROOT].children == ["1.1", "1.3", "1.4"]
    df = check_against_reference(plan, list(cell_ids), cells, drugs, spec)
    # its cells still train every other node
    assert {"c2", "c3"} <= set(df.loc[(df.node == "1.1") & (df.role == "train_added"), "cell"])


def test_holdout_rows_are_never_train_or_val():
    ds = tiny_dataset(cells=60, seed=6)
    plan = plan_for(ds, PlanSpec(n=3, s=2, holdout_fraction=0.2, seed=9))
    test = np.flatnonzero(plan.holdout)
    assert len(test) == round(0.2 * ds.n_rows)
    for name in plan.trained_nodes():
        r = plan.rows(name)
        assert np.array_equal(r.test, test)
        assert not np.intersect1d(r.train, test).size and not np.intersect1d(r.val, test).size
        assert len(r.train) + len(r.val) + len(r.test) == ds.n_rows


def test_crossed_partition_on_synthetic_data():
    ds = tiny_dataset(cells=40, drugs=9, seed=8)
    plan = plan_for(ds, PlanSpec(n=3, s=2, partition="cells+drugs", seed=1))
    assert len(plan) == 3 + 9
    check_crossed(plan, ds.cell_ids, ds.drug_ids, ds.cell_index, ds.drug_index)
    # min(cell parts, drug parts) children: 9 drugs / 3 = 3 per child, then 1 each
    deep = plan_for(ds, PlanSpec(n=3, s=3, partition="cells+drugs", seed=1))
    assert all(len(deep.nodes[n].children) <= 1 for n in deep.nodes if deep.nodes[n].stage == 2)
    check_crossed(deep, ds.cell_ids, ds.drug_ids, ds.cell_index, ds.drug_index)


@pytest.mark.parametrize("spec, message", [
    (dict(n=1), "n must be >= 2"),
    (dict(s=0), "s must be >= 1"),
    (dict(n=31), "larger than the number of cells"),
    (dict(n=7, partition="cells+drugs"), "larger than the number of drugs"),
    (dict(order="random"), "order"),
    (dict(partition="blocks"), "partition"),
    (dict(n=7, partition="drugs"), "larger than the number of drugs"),
    (dict(holdout_fraction=1.5), "holdout_fraction"),
])
def test_impossible_settings_are_input_errors(spec, message):
    ds = tiny_dataset(cells=30, drugs=6)
    with pytest.raises(InputError, match=message):
        plan_for(ds, PlanSpec(**spec))


def test_no_rows_left_is_an_input_error():
    ids = np.array(["a", "b", "c"], dtype=object)
    with pytest.raises(InputError, match="no response rows"):
        build_plan(ids, ids[:1], np.zeros(0, int), np.zeros(0, int), PlanSpec(n=2, s=1))
    with pytest.raises(InputError, match="outside the id lists"):
        build_plan(ids, ids[:1], np.array([0, 3]), np.array([0, 0]), PlanSpec(n=2, s=1))


# -------------------------------------------------------------------- CLI --

@pytest.fixture(scope="module")
def h5(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan") / "d.h5"
    write_uno(tiny_dataset(cells=64, drugs=8, seed=5), str(path))
    return str(path)


def test_cli_prints_stages_and_writes_plan_csv(h5, tmp_path, capsys):
    out = tmp_path / "plan.csv"
    assert main(["plan", "--data", h5, "--n", "4", "--s", "3", "--seed", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "built in" in text and "total 84 nodes" in text
    lines = [ln.split() for ln in text.splitlines() if ln.strip()[:1].isdigit()]
    assert [(ln[0], ln[1], ln[2], ln[3]) for ln in lines] == [
        ("1", "4", "16.00", "48.00"), ("2", "16", "4.00", "60.00"), ("3", "64", "1.00", "63.00")]
    df = read_plan_csv(out)
    ds = read_uno(h5)
    plan = plan_for(ds, PlanSpec(n=4, s=3, seed=2))
    assert df.equals(plan_csv(plan))
    assert [f for f in os.listdir(tmp_path) if f != "plan.csv"] == []  # no temp file left


def test_cli_config_file_and_set(h5, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data = "{h5}"\nn = 2\ns = 2\norder = "ordered"\n')
    assert main(["plan", str(cfg), "--set", "s=3", "--out", str(tmp_path / "p.csv")]) == 0
    assert "total 14 nodes" in capsys.readouterr().out
    df = read_plan_csv(tmp_path / "p.csv")
    assert df["stage"].astype(int).max() == 3 and set(df.node.str.count(r"\.")) == {1, 2, 3}


def test_cli_crossed_partition(h5, tmp_path):
    assert main(["plan", "--data", h5, "--n", "2", "--s", "2", "--partition", "cells+drugs",
                 "--out", str(tmp_path / "x.csv")]) == 0
    df = read_plan_csv(tmp_path / "x.csv")
    assert set(df.role) == {"val", "val_drug"} and len(set(df.node)) == 6


@pytest.mark.parametrize("argv, message", [
    (["--data", "MISSING.h5", "--out", "plan.csv"], "does not exist"),
    (["--data", "{h5}", "--n", "65", "--out", "plan.csv"], "larger than the number of cells"),
    (["--data", "{h5}", "--n", "1", "--out", "plan.csv"], "'n' must be >= 2"),
    (["--data", "{h5}", "--s", "0", "--out", "plan.csv"], "'s' must be >= 1"),
    (["--data", "{h5}", "--holdout-fraction", "0.9", "--out", "plan.csv"], "holdout_fraction"),
    (["--data", "{h5}", "--set", "seeed=3", "--out", "plan.csv"], "did you mean 'seed'"),
    (["--n", "3", "--out", "plan.csv"], "plan needs --data"),
    (["--data", "{h5}", "--out", "NODIR/plan.csv"], "does not exist"),
    (["--data", "{h5}", "--out", "."], "is a directory"),
])
def test_cli_bad_input_exit_2_and_no_output(h5, tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(["plan", *(a.replace("{h5}", h5) for a in argv)]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("hbl_mpi: error: ") and message in err and err.count("\n") == 1
    assert "built in" not in captured.out  # rejected before any work
    assert os.listdir(tmp_path) == []


def test_cli_failed_write_leaves_previous_file_intact(h5, tmp_path, monkeypatch):
    from hbl_mpi.tree.plan import Plan

    out = tmp_path / "plan.csv"
    out.write_text("previous\n")

    def broken(self, path):
        with open(path, "w") as f:
            f.write("node,parent,stage,cell,role\n1.1,1,1,")
        raise OSError("disk full")

    monkeypatch.setattr(Plan, "write_csv", broken)
    assert main(["plan", "--data", h5, "--out", str(out)]) == 4  # a failed write: exit 4, one line
    assert out.read_text() == "previous\n"
    assert os.listdir(tmp_path) == ["plan.csv"]
