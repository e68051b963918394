"""The paper's measurements on a hand-made 2 x 2 tree whose answers are worked out by hand."""

import numpy as np
import pandas as pd
import pytest

from hbl_mpi.analysis import paper_stats as A
from hbl_mpi.store.results import RunTables, read_results
from resultsutil import write_results


def make_nodes() -> pd.DataFrame:
    # node, val_loss, stopped_early, epochs_run, start, stop, group, train_s, steps
    rows = [
        ("1.1", 1.0, True, 5, 0.0, 10.0, 1, 3600.0, 100),
        ("1.2", 2.0, True, 7, 0.0, 12.0, 2, 100.0, 100),
        ("1.1.1", 1.5, False, 2, 10.0, 15.0, 1, 10.0, 40),
        ("1.1.2", 0.5, True, 4, 12.0, 20.0, 2, 1800.0, 50),
        ("1.2.1", 7.0, False, 2, 15.0, 18.0, 1, 10.0, 40),
        ("1.2.2", 1.0, False, 2, 20.0, 25.0, 2, 10.0, 40),
    ]
    df = pd.DataFrame(rows, columns=["node", "val_loss", "stopped_early", "epochs_run", "start", "stop",
                                     "group", "train_s", "steps"])
    df["parent"] = [n.rpartition(".")[0] for n in df["node"]]
    df["stage"] = [n.count(".") for n in df["node"]]
    df["status"] = "done"
    df["epochs_planned"] = [10 if s == 1 else 5 for s in df["stage"]]
    df["transfer_s"] = 0.0
    df["test_loss"] = df["val_loss"] * 2
    df["n_train_rows"] = 100
    return df


def test_parent_comparison_and_outlier_levels():
    lv = A.outlier_levels(make_nodes()).set_index("node")
    assert np.isnan(lv.loc["1.1", "outlier_level"])  # stage 1: no parent val_loss
    assert lv.loc["1.1.1", "parent_val_loss"] == 1.0
    assert lv.loc["1.1.1", "outlier_level"] == pytest.approx(0.5)
    assert lv.loc["1.2.1", "outlier_level"] == pytest.approx(2.5)
    assert lv.loc["1.2.2", "outlier_level"] == pytest.approx(-0.5)


def test_figs_8_to_12_by_stage():
    nodes = make_nodes()
    es = A.early_stopping(nodes).set_index("stage")
    assert es.loc[1, "fraction_stopped_early"] == 1.0
    assert es.loc[2, "fraction_stopped_early"] == 0.25
    ep = A.epochs_run(nodes).set_index("stage")
    assert ep.loc[1, "mean_epochs_run"] == 6.0 and ep.loc[2, "mean_epochs_run"] == 2.5
    assert ep.loc[1, "epochs_planned"] == 10
    inc = A.increase_fraction(nodes).set_index("stage")
    assert list(inc.index) == [2]  # stage 1 has no parent val_loss
    assert inc.loc[2, "fraction_increased"] == 0.5
    d = A.increase_delta(nodes).set_index("stage")
    # increases 0.5 and 5.0 -> mean 2.75; stage mean val_loss (1.5 + 0.5 + 7 + 1) / 4 = 2.5
    assert d.loc[2, "increase_delta"] == pytest.approx(2.75 / 2.5)
    table = A.stage_table(nodes)
    assert list(table["stage"]) == [1, 2]
    assert np.isnan(table.loc[0, "fraction_increased"])


def test_percentiles_follow_the_papers_direction():
    pc = A.val_loss_percentiles(make_nodes()).set_index("stage")
    # stage 2 values 0.5, 1, 1.5, 7: the paper's 99 % is the (near-)best = 1st percentile of val_loss
    assert pc.loc[2, "p99"] == pytest.approx(0.5 + 0.03 * 0.5)
    assert pc.loc[2, "p50"] == pytest.approx(1.25)
    assert pc.loc[2, "p10"] == pytest.approx(np.percentile([0.5, 1, 1.5, 7], 90))
    assert pc.loc[2, "p99"] < pc.loc[2, "p50"] < pc.loc[2, "p10"]


def test_outlier_counts_and_cdf():
    nodes = make_nodes()
    c = A.outlier_counts(nodes).set_index("threshold")
    assert c.loc[1.0, "nodes_above"] == 1 and c.loc[2.0, "nodes_above"] == 1
    assert c.loc[1.0, "fraction_of_all"] == pytest.approx(1 / 6)
    assert c.loc[1.0, "fraction_of_compared"] == pytest.approx(1 / 4)
    cdf = A.outlier_cdf(nodes)
    assert list(cdf["node"]) == ["1.1.1", "1.2.1"]
    assert list(cdf["cum_fraction"]) == [0.5, 1.0]
    # of the 4 compared nodes, 1 lies above 0.5 and none above 2.5
    assert list(cdf["fraction_above"]) == [0.25, 0.0]


def test_best_trajectory_table2():
    t = A.best_trajectory(make_nodes()).iloc[0]
    assert t["node"] == "1.1.2"
    assert t["training_hours"] == pytest.approx(1.5)
    assert t["steps"] == 150 and t["epochs"] == 9
    assert t["val_loss"] == 0.5 and t["test_loss"] == 1.0
    assert A.trajectory("1.10.3") == ["1.10", "1.10.3"]


def test_busy_workers_step_function():
    nodes = make_nodes()
    bw = A.busy_workers(nodes, group_size=3)
    assert list(bw["time"]) == [0, 10, 12, 15, 18, 20, 25]
    assert list(bw["busy_groups"]) == [2, 2, 2, 2, 1, 1, 0]
    assert list(bw["busy_workers"]) == [6, 6, 6, 6, 3, 3, 0]
    u = A.utilisation(nodes)
    assert u["span_s"] == 25 and u["groups"] == 2
    assert u["mean_busy_groups"] == pytest.approx(43 / 25)
    assert u["utilisation"] == pytest.approx(43 / 50)


def test_failed_nodes_are_not_measured_and_break_parent_links():
    nodes = make_nodes()
    nodes.loc[nodes["node"] == "1.2", ["status", "val_loss"]] = ["failed", np.nan]
    nodes.loc[nodes["node"].isin(["1.2.1", "1.2.2"]), ["status", "val_loss", "start", "stop"]] = [
        "skipped", np.nan, np.nan, np.nan]
    assert len(A.measured(nodes)) == 3
    inc = A.increase_fraction(nodes).set_index("stage")
    assert inc.loc[2, "nodes_with_parent"] == 2 and inc.loc[2, "fraction_increased"] == 0.5
    assert A.outlier_counts(nodes).loc[0, "nodes_above"] == 0
    # the failed node still occupied its group: it has a start and a stop
    assert A.busy_workers(nodes)["busy_groups"].max() == 2


def test_by_run_stacks_strategies():
    a = RunTables(make_nodes(), pd.DataFrame(), pd.DataFrame(), path="a.h5", label="EXP2")
    b = RunTables(make_nodes(), pd.DataFrame(), pd.DataFrame(), path="b.h5", label="EXP2")
    A.unique_labels([a, b])
    assert (a.label, b.label) == ("EXP2 #1", "EXP2 #2")
    t = A.by_run([a, b], A.early_stopping)
    assert list(t["strategy"]) == ["EXP2 #1", "EXP2 #1", "EXP2 #2", "EXP2 #2"]
    assert len(A.best_trajectories([a, b])) == 2


def test_a_run_written_and_read_back_measures_the_same(tmp_path):
    """The tables the one reader gives (schema dtypes: counts as float64) measure as the frames written."""
    nodes = make_nodes()
    nodes.loc[nodes["node"] == "1.2.2", ["status", "val_loss"]] = ["failed", np.nan]
    path = write_results(tmp_path / "results.h5", nodes, config={"strategy": "LINE", "s": 2, "group_size": 2})
    run = read_results(path)
    assert (run.label, run.final_stage, run.group_size) == ("LINE", 2, 2)
    for fn in (A.stage_table, A.outlier_levels, A.outlier_cdf, A.outlier_counts, A.best_trajectory,
               A.failed_nodes, A.busy_workers):
        pd.testing.assert_frame_equal(fn(run.nodes), fn(nodes), check_dtype=False, obj=fn.__name__)
    assert A.compute_totals(run.nodes) == A.compute_totals(nodes)
    assert A.utilisation(run.nodes, run.group_size) == A.utilisation(nodes, 2)
