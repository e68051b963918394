"""Issue 28 items 6-7: results joined with data are checked to belong together, and a results
file the reader accepts never crashes a reader.

* ``report --baselines`` / ``--data`` and ``curate`` compare the data checksum recorded in the
  results with the data given, through the one function ``run --restart`` uses
  (``store.provenance.check_same_data``); results without a checksum get a warning naming the
  risk (``curate`` refuses them unless ``--force``).
* ``curate`` on a partial run warns with both counts (ranked cells, cells in the data).
* A results file with only the schema's required columns reads with every optional column
  filled, so ``report`` and ``run --restart`` work on it; duplicated node rows are refused by
  ``read_results`` (one line, exit 2) rather than crashing ``report``/``curate`` or being
  carried forward by ``--restart``.

And item 8: a flush killed part-way leaves ``.results.h5.XXXXXXXX.tmp`` in OUT; a run
(``--restart`` or fresh) removes such stale temporaries of its own files once it holds the lock.

Everything runs in this process through ``hbl_mpi.__main__.main`` (no MPI needed).
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from hbl_mpi.__main__ import main
from tinyrun import write_tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished serial run (2 x 2 stages, 12 cells) and another data set of the same shape."""
    from hbl_mpi.data import synthesize, write_uno

    root = tmp_path_factory.mktemp("provenance")
    cfg = write_tiny_run(root, tree={"n": 2, "s": 2, "strategy": "flat:1"}, synth={"cells": 12, "drugs": 4})
    write_uno(synthesize("small", seed=9, cells=12, drugs=4), str(root / "other.h5"))
    assert main(["run", str(cfg), "--serial", "--out", str(root / "r")]) == 0
    return root, cfg


def _copy_run(root, tmp_path, name="r"):
    dst = tmp_path / name
    shutil.copytree(root / "r", dst)
    return dst


def _rewrite(path, key, change):
    with pd.HDFStore(path, mode="a") as st:
        attrs = {a: getattr(st.get_storer(key).attrs, a) for a in st.get_storer(key).attrs._v_attrnames
                 if a in ("config_json", "versions_json", "data_checksum")}
        df = change(st[key])
        st.remove(key)
        st.put(key, df, format="table", track_times=False)
        for a, v in attrs.items():
            setattr(st.get_storer(key).attrs, a, v)


def _drop_checksum(path):
    with pd.HDFStore(path, mode="a") as st:
        del st.get_storer("nodes").attrs.data_checksum


def _one_line(capsys, prefix="hbl_mpi: error: "):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(prefix), err
    return err[0]


# ----------------------------------------------------------------------------- the data checksum


def test_report_baselines_refuse_other_data(run, tmp_path, capsys):
    """Before: the baselines were scored on whatever file sat at the run's path (or --data)."""
    root, _ = run
    out = tmp_path / "rep"
    assert main(["report", str(root / "r" / "results.h5"), "--baselines", "--data", str(root / "other.h5"),
                 "--out", str(out)]) == 2
    line = _one_line(capsys)
    assert "report: data" in line and "data checksums differ" in line and not out.exists()
    assert main(["report", str(root / "r" / "results.h5"), "--data", str(root / "other.h5"), "--out", str(out)]) == 2
    assert "data checksums differ" in _one_line(capsys) and not out.exists()


def test_report_baselines_refuse_data_replaced_at_the_runs_path(run, tmp_path, capsys):
    root, cfg = run
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(root / "other.h5", moved / "tiny.h5")  # another data set at the recorded path's name
    out = _copy_run(root, tmp_path)
    with pd.HDFStore(out / "results.h5", mode="a") as st:
        import json

        a = st.get_storer("nodes").attrs
        conf = json.loads(a.config_json)
        conf["data"] = str(moved / "tiny.h5")
        a.config_json = json.dumps(conf)
    assert main(["report", str(out / "results.h5"), "--baselines", "--out", str(tmp_path / "rep")]) == 2
    assert "data checksums differ" in _one_line(capsys)


def test_results_without_a_checksum_warn_in_report(run, tmp_path, capsys):
    root, _ = run
    out = _copy_run(root, tmp_path)
    _drop_checksum(out / "results.h5")
    assert main(["report", str(out / "results.h5"), "--data", str(root / "tiny.h5"), "--cells", "0",
                 "--out", str(tmp_path / "rep")]) == 0
    warn = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("hbl_mpi: warning:")]
    assert len(warn) == 1 and "records no data checksum" in warn[0] and "results are wrong" in warn[0], warn


def test_curate_refuses_results_without_a_checksum_unless_forced(run, tmp_path, capsys):
    root, _ = run
    out = _copy_run(root, tmp_path)
    _drop_checksum(out / "results.h5")
    cur = tmp_path / "cur.h5"
    argv = ["curate", str(out / "results.h5"), "--data", str(root / "tiny.h5"), "--drop", "2", "--by", "resist",
            "--out", str(cur)]
    assert main(argv) == 2
    assert "records no data checksum" in _one_line(capsys) and not cur.exists()
    assert main(argv + ["--force"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hbl_mpi: warning:") and "records no data checksum" in err[0]
    assert cur.exists()


def test_curate_refuses_other_data_through_the_shared_check(run, tmp_path, capsys):
    root, _ = run
    cur = tmp_path / "cur.h5"
    assert main(["curate", str(root / "r" / "results.h5"), "--data", str(root / "other.h5"), "--drop", "2",
                 "--by", "resist", "--out", str(cur)]) == 2
    assert "curate: data" in _one_line(capsys) and not cur.exists()


def test_one_checksum_check_for_restart_report_and_curate():
    """The three callers use the one function (no second comparison to drift apart)."""
    import inspect

    import hbl_mpi.checkpoint.restart as restart
    import hbl_mpi.commands.curate as curate
    import hbl_mpi.report.build as build

    for mod in (restart, curate, build):
        src = inspect.getsource(mod)
        assert "check_same_data(" in src, mod.__name__
        assert "data_checksum !=" not in src and "!= run_.data_checksum" not in src, mod.__name__


def test_curate_on_a_partial_run_warns_with_both_counts(run, tmp_path, capsys):
    """Before: 'drop 2 of 6 cells' for a run that ranked 6 of the data's 12, and no warning."""
    from hbl_mpi.store.results import ResultsWriter, read_results

    root, _ = run
    out = _copy_run(root, tmp_path)
    prev = read_results(str(out / "results.h5"))
    keep = {"1.1", "1.1.1", "1.1.2"}  # the 1.2 subtree never finished: its cells are not ranked
    cut = prev.without(set(prev.nodes["node"]) - keep)
    ResultsWriter(str(out / "results.h5"), config=prev.config, versions={}, data_checksum=prev.data_checksum,
                  plan_frame=pd.read_hdf(out / "results.h5", "plan"), truth=None, previous=cut).flush()
    cur = tmp_path / "cur.h5"
    assert main(["curate", str(out / "results.h5"), "--data", str(root / "tiny.h5"), "--drop", "2", "--by", "resist",
                 "--out", str(cur)]) == 0
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hbl_mpi: warning:"), err
    ranked = len(read_results(str(out / "results.h5")).cell_val["cell"].unique())
    assert f"ranks {ranked} of the data's 12 cells" in err[0] and ranked < 12
    assert f"{12 - ranked} unranked cells are kept" in err[0]
    assert f"of {ranked} ranked cells (12 in the data)" in captured.out


# ----------------------------------------------------------------------------- readers of minimal files


def _only_required(path):
    from hbl_mpi.store.results import SCHEMA

    for name in ("nodes", "history", "cell_val", "cell_test", "cell_pred", "plan"):
        with pd.HDFStore(path, mode="r") as st:
            present = f"/{name}" in st.keys()
        if present:
            keep = [c.name for c in SCHEMA[name].columns if c.required]
            _rewrite(path, name, lambda df, keep=keep: df[keep])


def test_results_with_only_required_columns_read_with_every_column(run, tmp_path):
    from hbl_mpi.store.results import NODES, read_results

    root, _ = run
    out = _copy_run(root, tmp_path)
    _only_required(out / "results.h5")
    tables = read_results(str(out / "results.h5"))
    assert set(NODES.always_written) <= set(tables.nodes.columns)
    assert tables.nodes["epochs_run"].isna().all() and (tables.nodes["error"] == "").all()
    assert (tables.nodes["group"] == -1).all() and not tables.nodes["stopped_early"].any()
    assert "n_rows" in tables.cell_val.columns and "epoch" in tables.history.columns


def test_report_and_restart_on_results_with_only_required_columns(run, tmp_path, capsys):
    """Before: KeyError tracebacks in report and --restart."""
    root, cfg = run
    out = _copy_run(root, tmp_path)
    _only_required(out / "results.h5")
    assert main(["report", str(out / "results.h5"), "--cells", "0", "--out", str(tmp_path / "rep")]) == 0
    capsys.readouterr()
    code = main(["run", str(cfg), "--serial", "--out", str(out), "--restart"])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "KeyError" not in err
    assert code == 0, err
    nodes = pd.read_hdf(out / "results.h5", "nodes")
    assert nodes["node"].is_unique and (nodes["status"] == "done").all()


def _duplicate_a_node(path):
    _rewrite(path, "nodes", lambda df: pd.concat([df, df.iloc[[0]]], ignore_index=True))


@pytest.mark.parametrize("argv", [
    lambda r, root, tmp: ["report", r, "--out", str(tmp / "rep")],
    lambda r, root, tmp: ["curate", r, "--data", str(root / "tiny.h5"), "--drop", "2", "--by", "resist",
                          "--out", str(tmp / "cur.h5")],
])
def test_duplicated_node_rows_are_refused(run, tmp_path, capsys, argv):
    root, _ = run
    out = _copy_run(root, tmp_path)
    _duplicate_a_node(out / "results.h5")
    assert main(argv(str(out / "results.h5"), root, tmp_path)) == 2
    line = _one_line(capsys)
    assert "table 'nodes' has 1 node(s) with more than one row (first: 1" in line
    assert not (tmp_path / "rep").exists() and not (tmp_path / "cur.h5").exists()


def test_restart_refuses_duplicated_node_rows(run, tmp_path, capsys):
    """Before: --restart carried both rows forward into the new results."""
    root, cfg = run
    out = _copy_run(root, tmp_path)
    _duplicate_a_node(out / "results.h5")
    before = (out / "results.h5").read_bytes()
    assert main(["run", str(cfg), "--serial", "--out", str(out), "--restart"]) == 2
    assert "more than one row" in _one_line(capsys)
    assert (out / "results.h5").read_bytes() == before
    assert np.array_equal(pd.read_hdf(out / "results.h5", "nodes")["node"].duplicated().to_numpy().nonzero()[0], [len(
        pd.read_hdf(out / "results.h5", "nodes")) - 1])


# ----------------------------------------------------------------------------- stale temporaries in OUT


@pytest.mark.parametrize("flags", [["--restart"], ["--overwrite"]])
def test_a_run_removes_stale_temporaries_of_its_files(run, tmp_path, capsys, flags):
    root, cfg = run
    out = _copy_run(root, tmp_path)
    stale = [out / ".results.h5.k3j9x_2a.tmp", out / ".run_stats.json.abcdefgh.tmp", out / ".restart.json.0123_xyz.tmp"]
    for p in stale:
        p.write_bytes(b"\0" * 100_000)
    elsewhere = tmp_path / "elsewhere.h5"
    elsewhere.write_bytes(b"not ours")
    os_link = out / ".results.h5.linklink.tmp"
    os_link.symlink_to(elsewhere)
    kept = [out / ".results.h5.short.tmp", out / "notes.tmp", out / ".other.h5.abcdefgh.tmp"]
    for p in kept:
        p.write_bytes(b"user's")
    assert main(["run", str(cfg), "--serial", "--out", str(out), *flags]) == 0
    log = capsys.readouterr().out
    assert "removed 4 temporary file(s) (0.3 MB) that an interrupted write left in" in log
    assert not any(p.exists() for p in stale) and not os_link.is_symlink()
    assert elsewhere.read_bytes() == b"not ours" and all(p.read_bytes() == b"user's" for p in kept)


def test_stale_temporaries_match_what_replace_file_creates(tmp_path, monkeypatch):
    """The pattern removed is the one ``replace_file`` writes: a temporary left by a writer
    killed before ``os.replace`` is found and removed."""
    import tempfile

    from hbl_mpi.core.atomic import remove_stale_temporaries, replace_bytes

    names = []
    real = tempfile.mkstemp

    def spy(*a, **k):
        fd, name = real(*a, **k)
        names.append(name)
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", spy)
    monkeypatch.setattr("hbl_mpi.core.atomic.os.replace", lambda a, b: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        replace_bytes(str(tmp_path / "results.h5"), b"x" * 10)
    monkeypatch.undo()
    import os

    # replace_file unlinks on the way out of an exception; a SIGKILL would not: put it back
    open(names[0], "wb").write(b"x" * 10)
    assert remove_stale_temporaries(str(tmp_path), ["results.h5"]) == (1, 10)
    assert not os.path.exists(names[0])


def test_a_run_out_of_inodes_ends_with_the_disk_full_line(run, tmp_path, capsys, monkeypatch):
    """Issue 28 item 7: no free inode made ``mkstemp`` fail outside the WriteFailed wrapper,
    and the run ended with ``fatal: rank 0: OSError [Errno 28]`` instead of README's line."""
    import errno
    import tempfile

    root, cfg = run
    real = tempfile.mkstemp
    calls = []

    def no_inode_after_the_first(*a, **k):
        calls.append(k.get("prefix"))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(tempfile, "mkstemp", no_inode_after_the_first)
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--serial", "--out", str(out)]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hbl_mpi: fatal: disk full while writing"), err
    assert "free space and run --restart" in err[0]
