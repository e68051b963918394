"""The ``python -m hbl_mpi`` dispatcher: every subcommand is wired, help is cheap, bad input exits 2.

These run the real entry point in a subprocess (with a timeout), as a user or CI does: a
missing ``hbl_mpi/commands/<name>.py`` or a broken ``configure`` breaks ``--help`` for
every command, which is exactly what must never ship.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hbl_mpi.__main__ import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parent.parent
COMMANDS_DIR = ROOT / "hbl_mpi" / "commands"

pytestmark = pytest.mark.timeout(120)


def hbl(*args, timeout=60, cwd=None):
    return subprocess.run([sys.executable, "-m", "hbl_mpi", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def test_help_lists_every_subcommand():
    r = hbl("--help")
    assert r.returncode == 0, r.stderr
    assert "usage: python -m hbl_mpi" in r.stdout
    expected = ["data", "plan", "run", "report", "model", "curate"]
    assert set(expected) == set(COMMANDS)
    for name in expected:
        assert any(line.split()[:1] == [name] for line in r.stdout.splitlines()), f"{name} missing from --help"
        assert COMMANDS[name].split()[0] in r.stdout


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_subcommand_has_help(name, capsys):
    assert (COMMANDS_DIR / f"{name}.py").is_file(), f"hbl_mpi/commands/{name}.py is missing"
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([name, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m hbl_mpi {name}")


@pytest.mark.parametrize("argv, code, fragment", [
    (["--version"], 0, "hbl_mpi "),
    ([], 2, "COMMAND"),
    (["frobnicate"], 2, "invalid choice"),
    (["plan", "--n", "three"], 2, "invalid int value"),
    (["data", "synth", "--seed", "x", "--out", "a.h5"], 2, "data synth: argument --seed: invalid int value"),
    (["report"], 2, "report: the following arguments are required"),
    (["run", "--no-such-flag"], 2, "unrecognized arguments: --no-such-flag"),
])
def test_version_and_usage_errors(argv, code, fragment, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == code
    captured = capsys.readouterr()
    assert fragment in (captured.out if code == 0 else captured.err)
    if code == 2:  # issue 28 item 8: one line, the package's prefix, as every other input error
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hbl_mpi: error: "), captured.err


def test_help_imports_no_heavy_module():
    """__main__'s promise: --help (and the parser) never pays for torch, MPI or pandas."""
    code = ("import sys; from hbl_mpi.__main__ import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'mpi4py', 'pandas', 'h5py', 'tables') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"building the CLI parser imported {r.stdout.strip()}"


def test_input_error_is_one_line_exit_2_without_traceback(tmp_path):
    r = hbl("plan", "--data", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "plan.csv"))
    assert r.returncode == 2
    assert r.stderr.startswith("hbl_mpi: error: data file") and r.stderr.count("\n") == 1
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert os.listdir(tmp_path) == []


def test_plan_command_end_to_end(tmp_path):
    from hbl_mpi.data import synthesize, write_uno

    data = tmp_path / "d.h5"
    write_uno(synthesize("small", seed=2, cells=30, drugs=5, cell_features=4, descriptors=4, fingerprints=0),
              str(data))
    r = hbl("plan", "--data", str(data), "--n", "3", "--s", "2", "--order", "ordered", "--out", "p.csv",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "total 12 nodes" in r.stdout and "built in" in r.stdout
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "node,parent,stage,cell,role" and len(lines) == 1 + 2 * 3 * 30
    assert sorted(os.listdir(tmp_path)) == ["d.h5", "p.csv"]
