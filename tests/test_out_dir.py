"""The output directory (issue 19 items 2, 3, 6): a full disk loses nothing, one run per
OUT, and no write into OUT follows a symlink.

Disk full is tested two ways: an injected ``ENOSPC`` (always runs) and, where this process
may mount a small tmpfs (root), an honest run that fills a real file system.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from hbl_mpi.core.atomic import WriteFailed
from hbl_mpi.store.outlock import acquire
from faultutil import TINY_TREE
from mpiutil import mpi_env, run_mpi, run_py

CONFIG = TINY_TREE


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    from hbl_mpi.data import synthesize, write_uno

    path = tmp_path_factory.mktemp("outdir") / "d.h5"
    ds = synthesize("small", seed=4, cells=8, drugs=5, cell_features=4, descriptors=3, fingerprints=0,
                    anomaly_fraction=0.0)
    write_uno(ds, str(path), seed=1)
    return path


@pytest.fixture
def case(tmp_path, data_file) -> Path:
    (tmp_path / "d.h5").write_bytes(data_file.read_bytes())
    (tmp_path / "run.toml").write_text(CONFIG)
    return tmp_path


def one_error(proc, fragment: str, code: int = 2) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr
    mine = [line for line in lines if line.startswith("hbl_mpi: ")]
    assert len(mine) == 1 and fragment in mine[0], lines
    return mine[0]


# ----------------------------------------------------------------------------- 2. full disk

def _writer(path):
    from hbl_mpi.store.results import ResultsWriter

    plan = pd.DataFrame({"node": ["1.1"], "parent": ["1"], "stage": [1], "cell": ["A"], "role": ["val"]})
    return ResultsWriter(str(path), config={"n": 2}, versions={}, data_checksum="x", plan_frame=plan, truth=None)


def _node(w, name):
    w.add({"node": name, "parent": "1", "stage": 1, "status": "done", "group": 0, "val_loss": 0.5},
          [{"node": name, "epoch": 1, "loss": 1.0, "val_loss": 0.5, "seconds": 0.1}])


def test_flush_on_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    from hbl_mpi.store.results import read_results

    path = tmp_path / "results.h5"
    w = _writer(path)
    _node(w, "1.1")
    w.flush()
    before = path.read_bytes()
    _node(w, "1.2")
    real_put = pd.HDFStore.put

    def full(self, key, *a, **k):
        if key == "history":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_put(self, key, *a, **k)

    monkeypatch.setattr(pd.HDFStore, "put", full)
    with pytest.raises(WriteFailed) as info:
        w.flush()
    assert info.value.disk_full and w.saved_done == 1
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["results.h5"]
    monkeypatch.setattr(pd.HDFStore, "put", real_put)
    w.flush()  # space again: the tables were kept in memory
    assert sorted(read_results(str(path)).done_nodes()) == ["1.1", "1.2"] and w.saved_done == 2


def test_flush_verifies_the_new_file_before_replacing(tmp_path, monkeypatch):
    """HDF5 on a full disk can return normally and leave a file without ``nodes``: the
    read-back refuses it, and the previous file stays."""
    import hbl_mpi.store.results as results

    path = tmp_path / "results.h5"
    w = _writer(path)
    _node(w, "1.1")
    w.flush()
    before = path.read_bytes()
    real = results.replace_file

    def short_write(target, write, **kw):
        def write_then_lose_the_tail(tmp):
            write(tmp)
            with open(tmp, "r+b") as f:
                f.truncate(2048)
        return real(target, write_then_lose_the_tail, **kw)

    monkeypatch.setattr(results, "replace_file", short_write)
    _node(w, "1.2")
    with pytest.raises(WriteFailed):
        w.flush()
    assert path.read_bytes() == before


INJECT = """
import errno, sys
import pandas as pd
calls = {"n": 0}
real = pd.HDFStore.put
def put(self, key, *a, **k):
    if key == "nodes":
        calls["n"] += 1
        if calls["n"] > FLUSHES:
            raise OSError(errno.ENOSPC, "No space left on device")
    return real(self, key, *a, **k)
pd.HDFStore.put = put
from hbl_mpi.store.results import ResultsWriter
ResultsWriter.maybe_flush = lambda self: self._dirty and (self.flush() or True)  # every node: no timing
from hbl_mpi.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # default tier: the full-disk flush tests above, in process
@pytest.mark.timeout(240)
def test_run_on_full_disk_exits_4_then_restarts(case):
    """ENOSPC from the 4th flush on: exit 4, one line naming the file and what it holds;
    --restart (disk freed) finishes the run from those nodes."""
    prog = INJECT.replace("FLUSHES", "3")
    t0 = time.monotonic()
    proc = run_py(["-c", prog, "run", "run.toml", "--serial", "--out", "out"], timeout=200, cwd=case)
    took = time.monotonic() - t0
    line = one_error(proc, "disk full while writing out/results.h5;", code=4)
    assert line.endswith("; 2 finished nodes are in it; free space and run --restart"), line
    held = 2
    from hbl_mpi.store.results import read_results

    assert len(read_results(str(case / "out" / "results.h5")).done_nodes()) == held >= 1
    assert [p for p in os.listdir(case / "out") if p.endswith(".tmp")] == []
    proc = run_py(["-m", "hbl_mpi", "run", "run.toml", "--serial", "--out", "out", "--restart"], timeout=200,
                  cwd=case)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(read_results(str(case / "out" / "results.h5")).done_nodes()) == 6
    print(f"disk full (injected), serial: exit 4 after {took:.1f} s")


FILL_AFTER_SECOND_FLUSH = """
import os, sys
from hbl_mpi.store.results import ResultsWriter
real = ResultsWriter.flush
def flush(self):
    real(self)
    if self.flushes == 2:  # one node saved: fill the real file system to 150 KB of free space
        st = os.statvfs(os.path.dirname(self.path))
        with open(os.path.join(os.path.dirname(self.path), "filler"), "wb") as f:
            f.write(b"x" * (st.f_bavail * st.f_frsize - 150_000))
ResultsWriter.flush = flush
ResultsWriter.maybe_flush = lambda self: self._dirty and (self.flush() or True)  # every node
from hbl_mpi.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # default tier: the full-disk flush tests above, in process
@pytest.mark.timeout(300)
def test_run_on_a_real_full_tmpfs(case):
    """An honest full disk: OUT is an 8 MB tmpfs (mounting needs root) that a filler file
    fills after the first node is saved; HDF5 then meets the real ENOSPC (or "succeeds"
    with a short file). Exit 4, the file keeps its nodes; the disk freed, --restart ends it."""
    out = case / "out"
    out.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(out)], check=True,
                       capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        t0 = time.monotonic()
        proc = run_py(["-c", FILL_AFTER_SECOND_FLUSH, "run", "run.toml", "--serial", "--out", "out"],
                      timeout=200, cwd=case)
        took = time.monotonic() - t0
        line = one_error(proc, "disk full while writing out/results.h5;", code=4)
        from hbl_mpi.store.results import read_results

        held = len(read_results(str(out / "results.h5")).done_nodes())
        assert held >= 1 and f"; {held} finished nodes are in it;" in line, line
        assert sorted(os.listdir(out)) == [".lock", "filler", "results.h5"]  # no temporary file left
        (out / "filler").unlink()
        proc = run_py(["-m", "hbl_mpi", "run", "run.toml", "--serial", "--out", "out", "--restart"],
                      timeout=200, cwd=case)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert len(read_results(str(out / "results.h5")).done_nodes()) == 6
        print(f"disk full (real tmpfs), serial: exit 4 after {took:.1f} s with {held} nodes kept")
    finally:
        subprocess.run(["umount", "-l", str(out)], capture_output=True, timeout=20)


# ----------------------------------------------------------------------------- 3. one run per OUT

@pytest.mark.timeout(240)
@pytest.mark.parametrize("flags", [[], ["--restart"], ["--overwrite"]])
def test_second_run_on_a_locked_out_gets_exit_2(case, flags):
    lock = acquire(str(case / "out"))  # this test process plays the live run
    try:
        t0 = time.monotonic()
        proc = run_py(["-m", "hbl_mpi", "run", "run.toml", "--serial", "--out", "out", *flags], timeout=200,
                      cwd=case)
        line = one_error(proc, f"out is in use by run pid {os.getpid()} on host ")
        assert " since " in line
        assert sorted(os.listdir(case / "out")) == [".lock"]
        print(f"locked OUT {flags}: exit 2 after {time.monotonic() - t0:.1f} s")
    finally:
        lock.release()


@pytest.mark.timeout(200)
def test_locked_out_under_mpi_all_ranks_exit_2(case):
    lock = acquire(str(case / "out"))
    try:
        proc = run_mpi(3, ["-m", "hbl_mpi", "run", "run.toml", "--out", "out"], timeout=180, cwd=case)
        one_error(proc, "out is in use by run pid")
    finally:
        lock.release()


@pytest.mark.timeout(200)
def test_fifo_at_the_lock_under_mpi_all_ranks_exit_2(case):
    """Issue 28 item 3: the lock check opened OUT/.lock without O_NONBLOCK; a FIFO there hung
    rank 0 in open(2) and every other rank with it."""
    (case / "out").mkdir()
    os.mkfifo(case / "out" / ".lock")
    proc = run_mpi(3, ["-m", "hbl_mpi", "run", "run.toml", "--out", "out"], timeout=180, cwd=case)
    one_error(proc, "out/.lock' is a FIFO")


def test_lock_dies_with_its_holder(tmp_path):
    """flock belongs to the process: kill -9 of the holder frees OUT at once."""
    code = f"from hbl_mpi.store.outlock import acquire; l = acquire({str(tmp_path / 'out')!r}); print('held', flush=True); " \
           "import time; time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=mpi_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        from hbl_mpi.core.errors import InputError

        with pytest.raises(InputError, match=f"in use by run pid {holder.pid}"):
            acquire(str(tmp_path / "out"))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    acquire(str(tmp_path / "out")).release()


def test_lock_file_symlink_is_refused(tmp_path):
    from hbl_mpi.core.errors import InputError

    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").write_text("keep")
    os.symlink(tmp_path / "elsewhere", tmp_path / "out" / ".lock")
    with pytest.raises(InputError, match="is a symlink"):
        acquire(str(tmp_path / "out"))
    assert (tmp_path / "elsewhere").read_text() == "keep"


# ----------------------------------------------------------------------------- 6. no symlink followed

@pytest.mark.timeout(240)
def test_planted_symlinks_in_out_are_not_followed(case):
    """A dangling link at the old fixed temporary name and a link at a report file: the
    run and the report write their own files, nothing outside OUT is created or changed."""
    out = case / "out"
    out.mkdir()
    os.symlink(case / "created_outside", out / "results.h5.tmp")
    proc = run_py(["-m", "hbl_mpi", "run", "run.toml", "--serial", "--out", "out"], timeout=200, cwd=case)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (case / "created_outside").exists()
    rep = case / "rep"
    rep.mkdir()
    (case / "victim.md").write_text("keep")
    os.symlink(case / "victim.md", rep / "report.md")
    proc = run_py(["-m", "hbl_mpi", "report", "out/results.h5", "--out", "rep"], timeout=200, cwd=case)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (case / "victim.md").read_text() == "keep"
    assert (rep / "report.md").is_file() and not (rep / "report.md").is_symlink()


@pytest.mark.timeout(240)
def test_run_stats_symlink_is_replaced_not_followed(case):
    out = case / "out"
    out.mkdir()
    (case / "victim.json").write_text("keep")
    os.symlink(case / "victim.json", out / "run_stats.json")
    proc = run_mpi(2, ["-m", "hbl_mpi", "run", "run.toml", "--out", "out"], timeout=220, cwd=case)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (case / "victim.json").read_text() == "keep"
    assert not (out / "run_stats.json").is_symlink()
    assert json.loads((out / "run_stats.json").read_text())["counts"]["done"] == 6


def test_overwrite_with_a_ckpts_symlink_is_one_line(case):
    out = case / "out"
    out.mkdir()
    (case / "keep").mkdir()
    (case / "keep" / "x").write_text("x")
    os.symlink(case / "keep", out / "ckpts")
    (out / "results.h5").write_bytes(b"old")
    proc = run_py(["-m", "hbl_mpi", "run", "run.toml", "--serial", "--out", "out", "--overwrite"], timeout=200,
                  cwd=case)
    one_error(proc, "ckpts' is a symlink")
    assert (case / "keep" / "x").exists() and (out / "results.h5").read_bytes() == b"old"




# ----------------------------------------------------------------------------- issue 28: one rule for outputs
# In-process (hbl_mpi.__main__.main): each command refuses, before it writes anything, an
# output that is one of its inputs (by path, through links, or by inode: a hard link) or
# that lies inside the OUT of a live run (OUT/.lock held; this test process plays the run).


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_file) -> Path:
    """A finished six-node run: ROOT/d.h5, ROOT/run.toml, ROOT/R/results.h5."""
    from hbl_mpi.__main__ import main

    root = tmp_path_factory.mktemp("outputs")
    (root / "d.h5").write_bytes(data_file.read_bytes())
    (root / "run.toml").write_text(CONFIG.replace('data = "d.h5"', f'data = "{root / "d.h5"}"'))
    assert main(["run", str(root / "run.toml"), "--serial", "--out", str(root / "R")]) == 0
    return root


def refused(argv, capsys, *fragments) -> str:
    """``main(argv)`` exits 2 with one line holding every fragment (both paths named)."""
    from hbl_mpi.__main__ import main

    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("hbl_mpi: error: "), (code, err)
    for fragment in fragments:
        assert str(fragment) in err[0], (fragment, err[0])
    return err[0]


def digest(path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_curate_out_is_its_data(finished_run, capsys):
    data = finished_run / "d.h5"
    before = digest(data)
    refused(["curate", finished_run / "R" / "results.h5", "--data", data, "--drop", "2", "--out", data], capsys,
            f"output '{data}' is the input '{data}'")
    assert digest(data) == before


def test_curate_out_is_a_hard_link_of_its_data(finished_run, tmp_path, capsys):
    data = tmp_path / "d.h5"
    data.write_bytes((finished_run / "d.h5").read_bytes())
    os.link(data, tmp_path / "other.h5")
    before = digest(data)
    refused(["curate", finished_run / "R" / "results.h5", "--data", data, "--drop", "2", "--out",
             tmp_path / "other.h5"], capsys, "hard link", str(tmp_path / "other.h5"), str(data))
    assert digest(data) == before


def test_curate_out_is_the_results_of_a_locked_run(finished_run, capsys):
    results = finished_run / "R" / "results.h5"
    before = digest(results)
    lock = acquire(str(finished_run / "R"))
    try:
        refused(["curate", results, "--data", finished_run / "d.h5", "--drop", "2", "--out", results], capsys,
                f"output '{results}' is the input")
        # any other file in the live run's OUT: the lock names the run
        refused(["curate", results, "--data", finished_run / "d.h5", "--drop", "2", "--out",
                 finished_run / "R" / "cur.h5"], capsys, "cur.h5", f"inside '{finished_run / 'R'}'",
                f"run pid {os.getpid()}")
    finally:
        lock.release()
    assert digest(results) == before and not (finished_run / "R" / "cur.h5").exists()


def test_improve_out_is_its_response_file(tmp_path, capsys):
    from test_improve import make_layout

    make_layout(tmp_path / "D")
    response = tmp_path / "D" / "y_data" / "response.tsv"
    before = digest(response)
    refused(["data", "improve", tmp_path / "D", "--source", "all", "--out", response], capsys,
            f"is the input '{response}'")
    assert digest(response) == before


def test_normalise_into_a_locked_out(finished_run, tmp_path, capsys):
    out = tmp_path / "OUT"
    out.mkdir()
    (out / "results.h5").write_bytes((finished_run / "R" / "results.h5").read_bytes())
    before = digest(out / "results.h5")
    lock = acquire(str(out))
    try:
        refused(["data", "normalise", finished_run / "d.h5", "--out", out / "results.h5"], capsys,
                str(out / "results.h5"), f"inside '{out}'")
        refused(["data", "synth", "--preset", "small", "--cells", "8", "--out", out / "synth.h5"], capsys,
                "synth.h5", f"inside '{out}'")
    finally:
        lock.release()
    assert digest(out / "results.h5") == before and sorted(os.listdir(out)) == [".lock", "results.h5"]


def test_normalise_and_plan_out_are_their_data(finished_run, tmp_path, capsys):
    data = tmp_path / "d.h5"
    data.write_bytes((finished_run / "d.h5").read_bytes())
    before = digest(data)
    link = tmp_path / "link.npz"
    os.symlink(data, link)  # through a symlink: the same file
    refused(["data", "normalise", data, "--out", link], capsys, "is the input")
    refused(["plan", "--data", data, "--n", "2", "--s", "2", "--out", data], capsys, "is the input")
    assert digest(data) == before


def test_report_into_a_locked_out(finished_run, capsys):
    results = finished_run / "R" / "results.h5"
    lock = acquire(str(finished_run / "R"))
    try:
        refused(["report", results], capsys, f"inside '{finished_run / 'R'}'", "report.html")  # default OUT/report
    finally:
        lock.release()
    assert not (finished_run / "R" / "report").exists()


def test_report_out_holding_its_reference(finished_run, tmp_path, capsys):
    """An input named like a report file in the report's folder would be replaced by it."""
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "report.md").write_bytes((finished_run / "d.h5").read_bytes())
    refused(["report", finished_run / "R" / "results.h5", "--out", rep, "--reference", rep / "report.md"], capsys,
            "report.md' is the input")


def test_run_out_holding_its_data(finished_run, tmp_path, capsys):
    """``--overwrite`` would replace OUT/results.h5: here it is the data file itself."""
    (tmp_path / "out").mkdir()
    data = tmp_path / "out" / "results.h5"
    data.write_bytes((finished_run / "d.h5").read_bytes())
    (tmp_path / "run.toml").write_text(CONFIG.replace('data = "d.h5"', 'data = "out/results.h5"'))
    before = digest(data)
    refused(["run", tmp_path / "run.toml", "--serial", "--out", tmp_path / "out", "--overwrite"], capsys,
            "is the input", "results.h5")
    assert digest(data) == before and sorted(os.listdir(tmp_path / "out")) == ["results.h5"]
