"""Fixtures the whole suite shares, built once per session.

The 3 x 2 tiny tree (tinyrun.write_3x2_run) is the reference that the MPI, restart and
curate tests compare against bit for bit: it is trained once here, serially and in
process, instead of once per test module.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@dataclass(frozen=True)
class ReferenceRun:
    """A finished serial run: its folder, config, results folder and node table (by node)."""

    root: Path
    cfg: Path
    out: Path
    nodes: pd.DataFrame


@pytest.fixture(scope="session")
def reference_3x2(tmp_path_factory) -> ReferenceRun:
    """The 3 x 2 tiny tree trained serially (12 nodes). Read-only: tests write elsewhere."""
    from hbl_mpi.__main__ import main
    from tinyrun import write_3x2_run

    root = tmp_path_factory.mktemp("reference_3x2")
    cfg = write_3x2_run(root)
    out = root / "serial"
    assert main(["run", str(cfg), "--serial", "--out", str(out)]) == 0
    nodes = pd.read_hdf(out / "results.h5", "nodes").set_index("node")
    return ReferenceRun(root, cfg, out, nodes)


@dataclass(frozen=True)
class MainResult:
    """What ``python -m hbl_mpi ARGS`` would give, run in this process (no interpreter or
    torch start-up: a bad-input case costs milliseconds, not seconds)."""

    returncode: int
    stdout: str
    stderr: str


def run_main(args: list[str]) -> MainResult:
    """``hbl_mpi.__main__.main(args)`` with its output captured; argparse's exits too."""
    import contextlib
    import io

    from hbl_mpi.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else 2
    return MainResult(int(code or 0), out.getvalue(), err.getvalue())
