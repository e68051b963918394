"""What a user sees (issue 19 item 9): Ctrl-C under MPI is one line, a report of a partial
run prints no library warning, and a line break in a cell id cannot break report.md."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from faultutil import TINY_TREE, all_nodes_slow
from mpiutil import mpi_env, mpiexec, run_py

CONFIG = TINY_TREE


def dataset(ids=None):
    from hbl_mpi.data import synthesize

    ds = synthesize("small", seed=4, cells=6, drugs=4, cell_features=3, descriptors=2, fingerprints=0,
                    anomaly_fraction=0.0)
    return ds if ids is None else replace(ds, cell_ids=np.array(ids, dtype=object), truth=None)


def test_markdown_cells_stay_on_one_line():
    from hbl_mpi.report.build import markdown_table

    df = pd.DataFrame({"cell": ["a\nb", "c|d", "e\\f", "tab\there"], "v": [1, 2, 3, 4]})
    lines = markdown_table(df).splitlines()
    assert len(lines) == 2 + len(df)
    assert lines[2] == "| a\\nb | 1 |" and lines[3] == "| c\\|d | 2 |" and lines[5] == "| tab\\there | 4 |"


@pytest.mark.timeout(300)
def test_partial_run_report_is_quiet_and_ids_with_newlines_keep_the_table(tmp_path):
    from hbl_mpi.data import write_uno

    ids = ["A\nB", "C\nc", "D\nd", "E\ne", "F\nf", "G|H\ng"]
    write_uno(dataset(ids), str(tmp_path / "d.h5"), seed=1)
    (tmp_path / "run.toml").write_text(CONFIG)
    proc = run_py(["-m", "hbl_mpi", "run", "run.toml", "--serial", "--out", "out", "--set",
                   'fault_fail_nodes=["1.1"]'], timeout=200, cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr[-2000:]
    proc = run_py(["-m", "hbl_mpi", "report", "out/results.h5", "--out", "rep"], timeout=200, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == "", proc.stderr  # no matplotlib UserWarning for the empty legends
    md = (tmp_path / "rep" / "report.md").read_text()
    for line in md.splitlines():
        if line.startswith("|"):
            assert line.endswith("|"), f"a table row was broken: {line!r}"
    assert "C\\nc" in md or "D\\nd" in md  # the ids are in the tables, escaped


@pytest.mark.timeout(300)
def test_sigint_under_mpi_is_one_line(tmp_path):
    from hbl_mpi.data import write_uno

    write_uno(dataset(), str(tmp_path / "d.h5"), seed=1)
    (tmp_path / "run.toml").write_text(CONFIG + all_nodes_slow(3.0))
    proc = subprocess.Popen([mpiexec(), "-n", "3", sys.executable, "-m", "hbl_mpi", "run", "run.toml", "--out",
                             "out"], cwd=tmp_path, env=mpi_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        for line in proc.stdout:  # the event: a worker is inside its first (slow) node
            if "fault_slow_nodes: node" in line:
                break
        os.kill(proc.pid, signal.SIGINT)  # as Ctrl-C at the terminal: mpiexec forwards it to every rank
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    ours = [line for line in err.splitlines() if line.startswith("hbl_mpi: ")]
    assert ours[0] == "hbl_mpi: fatal: rank 0: interrupted", err
    assert sum("interrupted" in line for line in ours) == 1, err


