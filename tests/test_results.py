"""results.h5: pandas-readable, atomically rewritten, restartable without duplicates."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest

from hbl_mpi.core.errors import InputError
from hbl_mpi.store.results import CELL_TEST, NODES, PLAN, SCHEMA, ResultsWriter, RunTables, read_results


def make_writer(path, previous=None):
    plan = pd.DataFrame({"node": ["1.1", "1.2"], "parent": ["1", "1"], "stage": [1, 1],
                         "cell": ["A", "B"], "role": ["val", "val"]})
    truth = pd.DataFrame({"cell": ["B"], "kind": ["shift"]})
    return ResultsWriter(str(path), config={"n": 2, "s": 1, "strategy": "EXP2"}, versions={"x": "1"},
                         data_checksum="abc", plan_frame=plan, truth=truth, flush_seconds=0.0,
                         previous=previous)


def add_node(w, node, status="done", val=0.5):
    w.add({"node": node, "parent": "1", "stage": 1, "status": status, "group": 0, "val_loss": val,
           "epochs_run": 3, "stopped_early": True, "error": "" if status == "done" else "boom"},
          [{"node": node, "epoch": e, "loss": 1.0 / e, "val_loss": val, "seconds": 0.1} for e in (1, 2, 3)],
          {"cell_val": pd.DataFrame({"node": [node], "cell": ["A"], "n_rows": [4], "mse": [val]}),
           "cell_test": (["A", "B"], [2, 3], [val, 2 * val])})


def write_done_and_failed(path):
    """A results file with node 1.1 done and 1.2 failed."""
    w = make_writer(path)
    add_node(w, "1.1")
    add_node(w, "1.2", status="failed", val=float("nan"))
    w.flush()


def test_tables_read_with_pandas(tmp_path):
    path = tmp_path / "results.h5"
    write_done_and_failed(path)
    for key in ("nodes", "history", "cell_val", "cell_test", "plan", "truth"):
        df = pd.read_hdf(path, key)
        assert len(df) > 0, key
    nodes = pd.read_hdf(path, "nodes")
    assert list(nodes["node"]) == ["1.1", "1.2"]
    assert list(nodes["status"]) == ["done", "failed"]
    assert nodes["epochs_run"].dtype.kind == "i"
    with pd.HDFStore(path, "r") as st:
        attrs = st.get_storer("nodes").attrs
        assert json.loads(attrs.config_json)["strategy"] == "EXP2" and attrs.data_checksum == "abc"
        assert "config" not in attrs._v_attrnames and "versions" not in attrs._v_attrnames  # nothing pickled
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_restart_keeps_only_done_nodes_once(tmp_path):
    path = tmp_path / "results.h5"
    write_done_and_failed(path)
    prev = read_results(str(path))
    assert prev.done_nodes() == {"1.1"}
    w2 = make_writer(path, previous=prev)
    add_node(w2, "1.2", val=0.25)
    w2.flush()
    nodes = pd.read_hdf(path, "nodes")
    assert sorted(nodes["node"]) == ["1.1", "1.2"]
    assert nodes.set_index("node").loc["1.2", "status"] == "done"
    hist = pd.read_hdf(path, "history")
    assert len(hist) == 6 and hist.groupby("node").size().to_dict() == {"1.1": 3, "1.2": 3}
    ct = pd.read_hdf(path, "cell_test")
    assert ct.groupby("node").size().to_dict() == {"1.1": 2, "1.2": 2}
    assert ct.set_index(["node", "cell"]).loc[("1.2", "B"), "mse"] == 0.5


def test_not_a_results_file(tmp_path):
    bad = tmp_path / "x.h5"
    pd.DataFrame({"a": [1]}).to_hdf(bad, key="other")
    with pytest.raises(InputError, match="not an hbl_mpi results file"):
        read_results(str(bad))
    with pytest.raises(InputError, match="does not exist"):
        read_results(str(tmp_path / "missing.h5"))
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(InputError, match="cannot read"):
        read_results(str(junk))


def test_schema_casts_what_the_writer_stores():
    t = NODES.written([{"node": "1.1", "stage": "2", "epochs_run": None, "val_loss": "0.5"}])
    assert list(t.columns) == NODES.always_written  # no expanded_by: no row gave one
    assert list(NODES.written([{"node": "1.1", "expanded_by": "rule"}]).columns) == NODES.names
    row = t.iloc[0]
    assert row["stage"] == 2 and row["epochs_run"] == -1 and row["val_loss"] == 0.5
    assert np.isnan(row["test_loss"]) and row["stopped_early"] is np.False_ and row["error"] == ""
    assert t["stage"].dtype == "int64" and t["val_loss"].dtype == "float64"
    assert {n for n, tb in SCHEMA.items() if tb.required} == {"nodes", "history", "cell_val"}


def test_one_reader_gives_the_schemas_tables(tmp_path):
    """The analysis, the report and the restart all read through read_results: one set of checks and dtypes."""
    path = tmp_path / "results.h5"
    write_done_and_failed(path)
    run = read_results(str(path))
    assert (run.path, run.label, run.final_stage, run.group_size) == (str(path), "EXP2", 1, 1)
    assert (run.config["n"], run.versions, run.data_checksum) == (2, {"x": "1"}, "abc")
    assert list(run.cell_test.columns) == CELL_TEST.names  # optional tables: this file has cell_test,
    assert run.cell_pred is None and run.cell_neighbours is None  # not these
    assert list(run.plan.columns) == PLAN.names and list(run.truth["kind"]) == ["shift"]
    assert list(run.nodes.columns) == NODES.always_written
    # counts the analysis sums read as float64; the stage stays an integer
    assert run.nodes["epochs_run"].dtype == "float64" and run.nodes["stage"].dtype == "int64"
    assert run.done_nodes() == {"1.1"}
    cut = run.without({"1.1"})
    assert list(cut.nodes["node"]) == ["1.2"] and set(cut.history["node"]) == {"1.2"}
    assert set(cut.cell_val["node"]) == {"1.2"} and cut.config == run.config and len(run.nodes) == 2
    with pytest.raises(TypeError):  # beyond config by name only: no field is silently shifted
        RunTables(run.nodes, run.history, run.cell_val, run.config, "abc")


def test_a_file_flushed_before_any_node_reads_back_empty(tmp_path):
    """A run killed before its first node finished leaves such a file: --restart must read it."""
    path = tmp_path / "results.h5"
    make_writer(path).flush()
    run = read_results(str(path))
    assert len(run.nodes) == 0 and run.nodes["stage"].dtype == "int64" and run.done_nodes() == set()
    assert list(run.history.columns)[:2] == ["node", "epoch"] and run.without({"1.1"}).data_checksum == "abc"


def _rewrite(path, key, change):
    """A copy of a results file with table ``key`` replaced by ``change(table)`` (None drops it)."""
    with pd.HDFStore(path, mode="a") as st:
        df = change(st[key])
        st.remove(key)
        if df is not None:
            st.put(key, df, format="table", track_times=False)


@pytest.mark.parametrize("key, change, match", [
    ("nodes", lambda df: df.drop(columns=["val_loss"]), "table 'nodes' lacks column.s. val_loss"),
    ("cell_val", lambda df: df.drop(columns=["cell"]), "table 'cell_val' lacks column.s. cell"),
    ("history", lambda df: None, "missing key.s.: history"),
    ("nodes", lambda df: df.assign(stage=["one", "two"]), "non-numeric stages"),
])
def test_reader_refuses_files_off_the_schema(tmp_path, key, change, match):
    path = tmp_path / "results.h5"
    write_done_and_failed(path)
    _rewrite(path, key, change)
    with pytest.raises(InputError, match=match):
        read_results(str(path))


def test_reader_derives_a_missing_parent_and_names_a_folder(tmp_path):
    path = tmp_path / "r.h5"
    w = make_writer(path)
    add_node(w, "1.1")
    w.flush()
    _rewrite(path, "nodes", lambda df: df.drop(columns=["parent"]))
    assert list(read_results(str(path)).nodes["parent"]) == ["1"]
    with pytest.raises(InputError, match="is not a file"):
        read_results(str(tmp_path))


@pytest.mark.timeout(120)
def test_kill_during_flushes_leaves_a_readable_file(tmp_path):
    """SIGKILL a process that flushes in a loop; the file always opens with whole nodes."""
    path = tmp_path / "results.h5"
    prog = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_results import make_writer, add_node
        w = make_writer({str(path)!r})
        i = 0
        while True:
            i += 1
            add_node(w, f"1.{{i}}")
            w.flush()
            print(i, flush=True)
    """)
    for delay in (0.8, 1.3, 1.9):
        proc = subprocess.Popen([sys.executable, "-c", prog], stdout=subprocess.PIPE, text=True)
        first = proc.stdout.readline()
        assert first.strip() == "1"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        nodes = pd.read_hdf(path, "nodes")
        hist = pd.read_hdf(path, "history")
        assert len(nodes) >= 1
        assert len(hist) == 3 * len(nodes)
        assert list(nodes["node"]) == [f"1.{i}" for i in range(1, len(nodes) + 1)]
        os.remove(path)


def test_cell_pred_and_static_tables_round_trip(tmp_path):
    import numpy as np

    from hbl_mpi.store.results import ResultsWriter, read_results

    nb = pd.DataFrame({"cell": ["a"], "neighbour": ["b"], "rank": [1], "similarity": [0.5]})
    path = str(tmp_path / "results.h5")
    w = ResultsWriter(path, config={"n": 2}, versions={}, data_checksum="x", plan_frame=pd.DataFrame({"node": ["1"], "cell": ["a"], "role": ["val"]}),
                      truth=None, static={"cell_neighbours": nb})
    w.add({"node": "1", "status": "done", "stage": 1}, [],
          {"cell_val": (np.array(["a"], dtype=object), np.array([2]), np.array([0.1])),
           "cell_pred": (np.array(["a", "a"], dtype=object), np.array(["x", "y"], dtype=object),
                         np.array([0.5, 0.6], np.float32), np.array([0.4, np.nan], np.float32))})
    w.flush()
    cp = pd.read_hdf(path, "cell_pred")
    assert list(cp.columns) == ["node", "cell", "drug", "pred", "label"] and len(cp) == 2
    assert pd.read_hdf(path, "cell_neighbours").equals(nb)
    prev = read_results(path)
    w2 = ResultsWriter(path, config={"n": 2}, versions={}, data_checksum="x", plan_frame=pd.DataFrame({"node": ["1"], "cell": ["a"], "role": ["val"]}),
                       truth=None, previous=prev)
    w2.flush()
    assert len(pd.read_hdf(path, "cell_pred")) == 2  # a restart keeps the finished nodes' predictions
