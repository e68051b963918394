"""Adaptive expansion: the pure rule, the dynamic plan, and the runs it grows.

The rule (``expansion.choose``/``Expander``) is tested on hand-made inputs whose answer is
known; the plan's growth keeps docs/design.md §3's invariants; serial, ``-n 2`` and ``-n 5`` runs
grow the same tree with the same numbers, equal to the full tree's rows for those nodes;
``--restart`` continues an adaptive run to the uninterrupted run's table.
"""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

import compare
from compare import assert_same_nodes
from hbl_mpi.__main__ import main
from hbl_mpi.core.config import EXPAND_SCORES, RunConfig
from hbl_mpi.core.epochs import parse_strategy
from hbl_mpi.core.errors import InputError
from hbl_mpi.adaptive.rule import Candidate, Expander, ExpansionRule, choose
from hbl_mpi.tree.invariants import check_invariants
from hbl_mpi.tree.plan import PlanSpec, build_plan, stage_of
from hbl_mpi.analysis.ranking import METHODS
from mpiutil import run_mpi

CONFIG = """
data = "{data}"
n = 2
s = 4
strategy = "exp2:3"
patience = 2
batch_size = 64
learning_rate = 0.003
model = "tiny"
seed = 5
threads = 1
flush_seconds = 0.0
"""
ADAPTIVE = 'expand = "adaptive"\nexpand_budget = 0.4\n'
SAME = ("epochs_run", "steps", "start_checksum", "inherit_checksum", "status", "expanded_by")


# --------------------------------------------------------------------------- the rule
def test_choose_takes_the_best_scored_candidates_that_fit():
    cands = [Candidate("1.1", ("a", "b"), 10.0), Candidate("1.2", ("c",), 10.0), Candidate("1.3", ("d",), 10.0)]
    score = {"a": 0.1, "b": 3.0, "c": 2.0, "d": 1.0}
    rule = ExpansionRule(budget=1.0)
    d = choose(cands, score, 25.0, rule)
    assert [(x.node, x.expand) for x in d] == [("1.1", True), ("1.2", True), ("1.3", False)]
    assert d[0].cell == "b" and d[0].score == 3.0 and "depth_weighted=3" in d[0].reason and "cell=b" in d[0].reason
    # a reserve per chosen node: only one fits
    assert [x.node for x in choose(cands, score, 25.0, rule, reserve=10.0) if x.expand] == ["1.1"]
    # a candidate too dear is skipped, a cheaper one after it still taken
    cands2 = [Candidate("1.1", ("a",), 30.0), Candidate("1.2", ("c",), 5.0)]
    assert [x.node for x in choose(cands2, {"a": 9.0, "c": 1.0}, 20.0, rule) if x.expand] == ["1.2"]
    # suspects quota: only nodes holding one of the top-2 cells
    q = [x.node for x in choose(cands, score, 100.0, ExpansionRule(suspects=2)) if x.expand]
    assert q == ["1.1", "1.2"]
    # ties: by node name; unscored candidates are never expanded
    tie = [Candidate("1.10", ("x",), 1.0), Candidate("1.2", ("y",), 1.0), Candidate("1.3", ("z",), 1.0)]
    got = choose(tie, {"x": 1.0, "y": 1.0}, 2.0, rule)
    assert [x.node for x in got if x.expand] == ["1.2", "1.10"] and not got[-1].expand


def _toy_expander(budget: float, stages: int = 3, n: int = 2) -> tuple[Expander, dict]:
    """A full binary tree over 8 cells; cell 'c5' is the only suspect."""
    cells = [f"c{i}" for i in range(8)]
    drugs = ["d0", "d1", "d2"]
    ci = np.repeat(np.arange(8), 3)
    di = np.tile(np.arange(3), 8)
    plan = build_plan(cells, drugs, ci, di, PlanSpec(n=n, s=stages, order="ordered", holdout_fraction=0.0))
    seed = plan.seedling(1)
    exp = Expander.for_plan(seed, ExpansionRule(budget=budget, full_stages=1), parse_strategy("flat:1", 20))
    return exp, {"plan": seed}


def _cell_val(node: str, val_cells, bad: str = "c5") -> pd.DataFrame:
    mse = [5.0 if c == bad else 1.0 + 0.01 * int(c[1:]) for c in val_cells]
    return pd.DataFrame({"node": node, "cell": list(val_cells), "n_rows": 3, "mse": mse})


def _grow_by_feeding(exp: Expander, plan, order_seed: int) -> list[str]:
    """Feed finished nodes in a random order (each after it exists); returns the tree."""
    from hbl_mpi.adaptive.growth import apply

    rng = random.Random(order_seed)
    pending = list(plan.trained_nodes())
    fed = []
    while pending:
        node = pending.pop(rng.randrange(len(pending)))
        fed.append(node)
        new = apply(exp.record(node, "done", _cell_val(node, exp.val_cells[node])), plan)
        pending.extend(new)
    return sorted(plan.trained_nodes())


def test_expander_decides_on_complete_stages_whatever_the_order():
    trees = []
    for order in range(6):
        exp, ctx = _toy_expander(budget=0.6)
        trees.append(_grow_by_feeding(exp, ctx["plan"], order))
        plan = ctx["plan"]
        check_invariants(plan)
        assert exp.spent <= 0.6 * exp.full_cost + 1e-9
    assert all(t == trees[0] for t in trees)
    # c5 lies in 1.2 (cells 4-7), then 1.2.1 (4, 5): the suspect's path is grown to a leaf
    assert {"1.2.1", "1.2.2", "1.2.1.1", "1.2.1.2"} <= set(trees[0])
    assert plan.nodes["1.2.1.2"].expanded_by.startswith("suspects:depth_weighted=")
    assert "cell=c5" in plan.nodes["1.2.1.2"].expanded_by


def test_no_round_before_its_stage_is_complete():
    exp, ctx = _toy_expander(budget=1.0)
    assert exp.record("1.1", "done", _cell_val("1.1", exp.val_cells["1.1"])) == []
    d = exp.record("1.2", "failed")  # a failed node is final but never expanded
    assert [(x.node, x.expand) for x in d] == [("1.1", True)]
    assert exp.record("1.1", "done") == []  # idempotent (a restart's rerun)


def test_budget_below_the_full_stages_is_an_input_error():
    with pytest.raises(InputError, match="expand_budget = 0.01 is"):
        _toy_expander(budget=0.01)


def test_plan_growth_keeps_the_invariants_and_costs_are_planned_row_epochs():
    exp, ctx = _toy_expander(budget=1.0)
    plan = ctx["plan"]
    assert plan.may_grow("1.1") and not plan.may_grow("1")
    kids = plan.grow("1.1", "test")
    assert kids == ["1.1.1", "1.1.2"] and plan.nodes["1.1.1"].expanded_by == "test"
    with pytest.raises(ValueError):
        plan.grow("1.1", "again")
    plan.decline("1.2")
    assert not plan.may_grow("1.2")
    check_invariants(plan)
    full = plan.planned_row_epochs(parse_strategy("flat:1", 20), 3, full=True)
    assert len(full) == 2 + 4 + 8 and full["1.1"] == 1 * (24 - 12)


def test_expand_scores_are_ranking_methods():
    assert set(EXPAND_SCORES) <= set(METHODS) and "node_outlier" not in EXPAND_SCORES
    assert RunConfig().expand == "full"


# --------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from hbl_mpi.data import synthesize, write_uno

    root = tmp_path_factory.mktemp("adaptive")
    ds = synthesize("small", seed=3, cells=64, drugs=10)
    write_uno(ds, str(root / "tiny.h5"))
    full = root / "full.toml"
    full.write_text(CONFIG.format(data=root / "tiny.h5"))
    ada = root / "ada.toml"
    ada.write_text(CONFIG.format(data=root / "tiny.h5") + ADAPTIVE)
    assert main(["run", str(full), "--serial", "--out", str(root / "full")]) == 0
    assert main(["run", str(ada), "--serial", "--out", str(root / "serial")]) == 0
    read = lambda d: pd.read_hdf(root / d / "results.h5", "nodes").set_index("node").sort_index()
    return root, ada, read("full"), read("serial")


def _same(a: pd.DataFrame, b: pd.DataFrame, cols=SAME) -> None:
    assert list(a.index) == list(b.index)
    assert_same_nodes(a, b, extra=tuple(c for c in cols if c not in compare.SAME))


def test_adaptive_run_is_a_subtree_of_the_full_run_with_its_numbers(runs):
    root, _, full, ada = runs
    assert 2 < len(ada) < len(full)
    assert set(ada.index) <= set(full.index)
    _same(ada, full.loc[ada.index], cols=SAME[:-1])
    assert (ada.loc[[n for n in ada.index if stage_of(n) == 1], "expanded_by"] == "full_stages").all()
    assert ada["expanded_by"].str.startswith("suspects:").sum() == len(ada) - 2
    planned = (ada["epochs_planned"] * ada["n_train_rows"]).sum()
    assert planned <= 0.4 * (full["epochs_planned"] * full["n_train_rows"]).sum()
    plan = pd.read_hdf(root / "serial" / "results.h5", "plan")
    assert set(plan["node"]) == set(ada.index)
    # the replay the study uses builds the same tree from the full run's results
    from hbl_mpi.core.config import load_config
    from hbl_mpi.data import read_uno
    from hbl_mpi.adaptive.growth import adaptive_plan, regrow
    from hbl_mpi.tree.plan import plan_for
    from hbl_mpi.store.results import read_results

    cfg = load_config(str(runs[1]))
    seed, exp = adaptive_plan(plan_for(read_uno(cfg.data), PlanSpec.from_config(cfg)), cfg)
    regrow(seed, exp, read_results(str(root / "full" / "results.h5")))
    assert sorted(seed.trained_nodes()) == sorted(ada.index)


def test_full_is_todays_tree(runs):
    _, _, full, _ = runs
    assert len(full) == 2 + 4 + 8 + 16 and "expanded_by" not in full.columns


@pytest.mark.timeout(600)
@pytest.mark.parametrize("ranks", [2, pytest.param(5, marks=pytest.mark.slow)])
def test_mpi_grows_the_serial_tree_bit_for_bit(runs, ranks):
    root, ada, _, serial = runs
    out = root / f"mpi{ranks}"
    proc = run_mpi(ranks, ["-m", "hbl_mpi", "run", str(ada), "--out", str(out)], timeout=500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    nodes = pd.read_hdf(out / "results.h5", "nodes")
    assert nodes["node"].is_unique
    _same(nodes.set_index("node").sort_index(), serial)


def _cut_results(src, dst, keep):
    import shutil

    from hbl_mpi.store.results import ResultsWriter, read_results

    shutil.copytree(src, dst)
    prev = read_results(str(dst / "results.h5"))
    cut = prev.without(set(prev.nodes["node"]) - set(keep))
    ResultsWriter(str(dst / "results.h5"), config=prev.config, versions={}, data_checksum="",
                  plan_frame=pd.read_hdf(dst / "results.h5", "plan"), truth=None, previous=cut).flush()


@pytest.mark.timeout(300)
def test_restart_of_an_adaptive_run_gives_the_uninterrupted_table(runs, tmp_path):
    root, ada, _, serial = runs
    # interrupted after every stage-1 and stage-2 node and one stage-3 node (no checkpoints:
    # the finished parents that unfinished or undecided children need run again)
    keep = [n for n in serial.index if stage_of(n) <= 2] + [sorted(n for n in serial.index if stage_of(n) == 3)[0]]
    out = tmp_path / "cut"
    _cut_results(root / "serial", out, keep)
    assert main(["run", str(ada), "--serial", "--out", str(out), "--restart"]) == 0
    nodes = pd.read_hdf(out / "results.h5", "nodes")
    assert nodes["node"].is_unique
    _same(nodes.set_index("node").sort_index(), serial)
    # a restart with another budget would grow another tree: refused
    assert main(["run", str(ada), "--serial", "--out", str(out), "--restart", "--set", "expand_budget=0.5"]) == 2


@pytest.mark.timeout(300)
def test_restart_under_mpi_continues_the_tree(runs, tmp_path):
    root, ada, _, serial = runs
    keep = [n for n in serial.index if stage_of(n) == 1]
    out = tmp_path / "cut"
    _cut_results(root / "serial", out, keep)
    proc = run_mpi(3, ["-m", "hbl_mpi", "run", str(ada), "--out", str(out), "--restart"], timeout=250)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    _same(pd.read_hdf(out / "results.h5", "nodes").set_index("node").sort_index(), serial)


def test_ranking_on_the_partial_tree_keeps_shallow_scores(runs):
    """A cell never expanded keeps the score the shallow stages gave it."""
    from hbl_mpi.analysis.ranking import rank_cells

    root, _, full, ada = runs
    cv_full = pd.read_hdf(root / "full" / "results.h5", "cell_val")
    cv_ada = pd.read_hdf(root / "serial" / "results.h5", "cell_val")
    r_ada = rank_cells(cv_ada).set_index("cell")
    stage1 = cv_full[cv_full["node"].map(stage_of) == 1]
    r1 = rank_cells(stage1).set_index("cell")
    shallow = r_ada.index[r_ada["stage"] == 1]
    assert len(shallow) > 0 and len(r_ada) == len(r1)  # every cell ranked
    np.testing.assert_allclose(r_ada.loc[shallow, "score"], r1.loc[shallow, "score"])


def test_report_shows_the_expanded_tree(runs, tmp_path):
    root = runs[0]
    assert main(["report", str(root / "serial" / "results.h5"), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Expanded tree" in md and "| suspects | depth_weighted |" in md
    assert (tmp_path / "rep" / "expanded_tree.png").exists()


def test_budget_too_small_for_the_full_stages_exits_2_one_line(runs, capsys):
    root, ada, _, _ = runs
    capsys.readouterr()
    code = main(["run", str(ada), "--serial", "--out", str(root / "small"), "--set", "expand_budget=0.01"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("hbl_mpi: error: expand_budget = 0.01 is")
    assert not (root / "small" / "results.h5").exists()


def test_adaptive_study_replay_is_the_live_adaptive_tree(runs):
    """bench/adaptive_study.py scores adaptive budgets by replaying the rule over a full
    tree's results; the replay must create exactly the nodes a live run trained (and the
    script must keep working against the results schema: it once imported a class the
    redesign had removed, and nothing noticed until the benchmark ran)."""
    import argparse
    import importlib.util

    from mpiutil import ROOT

    spec = importlib.util.spec_from_file_location("adaptive_study", ROOT / "bench" / "adaptive_study.py")
    study_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study_mod)
    root, _, _, ada = runs
    from hbl_mpi.analysis.baselines import config_from_dict
    from hbl_mpi.data import read_uno

    run, truth, config = study_mod.load(str(root / "full" / "results.h5"))
    cfg = config_from_dict(config)
    kept = study_mod.replay(run, read_uno(str(root / "tiny.h5")), cfg, 0.4, {})
    assert kept == set(ada.index[ada["status"] == "done"])
    args = argparse.Namespace(results=str(root / "full" / "results.h5"), data=str(root / "tiny.h5"),
                              budgets=[0.4], kfold=[5], rule=[], no_baselines=True, max_repeats=2, out=None)
    out = study_mod.study(args)
    rows = {r["method"]: r for r in out["rows"]}
    assert rows["adaptive 0.4"]["nodes"] == len(kept)
    assert rows["full S=4"]["nodes"] == len(run.nodes) and 0 <= rows["full S=4"]["ap"] <= 1
