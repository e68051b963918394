"""The bad-input corpus: every way a user can get a run wrong, end to end through the CLI.

Each case builds its own config/data in a fresh directory, runs the real entry point
(``python -m hbl_mpi run CFG --serial``; a few under ``mpiexec -n 3``) and asserts what
issue 7 promises: exit status 2, exactly one stderr line ``hbl_mpi: error: ...`` holding
the expected phrase, no traceback, and nothing written (the directory holds the same
files, byte for byte, as before: no output directory, no results.h5). Under mpiexec the
line is printed once, by rank 0, not once per rank, and the job ends (a timeout fails).

Other test files check many of these piecemeal (test_config, test_data, test_cli); this
is the one list of them all. Ids with the node separator (``.``) or non-ASCII letters are
*valid* (docs/design.md §1-2 puts no limit on id strings; nodes are named by path, never by cell
id): those cases must run to completion, and are checked at the end.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import textwrap
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from faultutil import RunsCode
from conftest import run_main
from mpiutil import run_mpi, run_py

BASE = """
n = 2
s = 1
strategy = "flat:1"
model = "tiny"
batch_size = 64
threads = 1
flush_seconds = 0.0
"""


def tiny_dataset(cells: int = 8):
    from hbl_mpi.data import synthesize

    return synthesize("small", seed=4, cells=cells, drugs=5, cell_features=4, descriptors=3, fingerprints=0,
                      anomaly_fraction=0.0)


def only_cells(ds, keep: int):
    """The data set restricted to its first ``keep`` cells (ids, features, responses)."""
    rows = ds.cell_index < keep
    groups = [replace(g, values=g.values[:keep]) if g.entity == "cell" else g for g in ds.groups]
    return replace(ds, cell_ids=ds.cell_ids[:keep], groups=groups, cell_index=ds.cell_index[rows],
                   drug_index=ds.drug_index[rows], label=ds.label[rows], truth=None)


@pytest.fixture(scope="module")
def good_h5(tmp_path_factory) -> Path:
    from hbl_mpi.data import write_uno

    path = tmp_path_factory.mktemp("corpus") / "good.h5"
    write_uno(tiny_dataset(), str(path), seed=1)
    return path


# ----------------------------------------------------------------------------- file surgery


def rewrite(path, key, fn) -> None:
    """Replace table ``key`` by ``fn(df)``, or delete it when ``fn`` returns None."""
    with pd.HDFStore(path, "a") as st:
        df = st.select(key)
        new = fn(df)
        st.remove(key)
        if new is not None:
            st.append(key, new, format="table", index=False,
                      **({"min_itemsize": {"Sample": 30, "Drug1": 30}} if key.startswith("y_") else {}))


def set_value(col, value, row=0):
    def fn(df):
        df = df.copy()
        df.iloc[row, df.columns.get_loc(col) if isinstance(col, str) else col] = value
        return df
    return fn


def duplicate_row_other_label(path) -> None:
    """Append a copy of y_train row 0 (same cell, drug, features) with a different AUC."""
    with pd.HDFStore(path, "r") as st:
        keys = [k.lstrip("/") for k in st.keys() if k.startswith("/x_train_")] + ["y_train"]
    for key in keys:
        def add(df, key=key):
            extra = df.iloc[[0]].copy()
            extra.index = [df.index.max() + 1]
            if key == "y_train":
                extra["AUC"] = np.float32(extra["AUC"].iloc[0] + 0.25)
            return pd.concat([df, extra])
        rewrite(path, key, add)


def plant_code(path) -> None:
    with pd.HDFStore(path, "a") as st:
        st.get_storer("y_train").attrs.note = RunsCode(Path(path).parent / "code_ran")


def three_cells_one_drug():
    from hbl_mpi.data import synthesize

    return synthesize("small", seed=4, cells=3, drugs=1, cell_features=2, descriptors=2, fingerprints=0,
                      anomaly_fraction=0.0)


def truncate(path) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def write_dataset(ds, path) -> None:
    from hbl_mpi.data import write_uno

    write_uno(ds, str(path), seed=1)


# ----------------------------------------------------------------------------- the corpus

# name -> (config lines added to BASE, extra CLI args, data preparation, expected phrase)
#   data preparation: None = the good file as data.h5; "absent" = no data.h5; a callable
#   receives the copied good file's path (and may rewrite or replace it).
CONFIG_CASES = {
    "malformed TOML": ("n = = 3", [], None, "is not valid TOML"),
    "unknown key, nearest name suggested": ("epoch = 3", [], None,
                                            "unknown config key 'epoch' (did you mean 'epochs'?)"),
    "unknown --set key, nearest name suggested": ("", ["--set", "paitence=2"], None,
                                                  "unknown config key 'paitence' in --set (did you mean 'patience'?)"),
    "unknown key, nothing near": ("frobnicate = 1", [], None, "unknown config key 'frobnicate'"),
    "TOML section": ("[training]\nepochs = 3", [], None, "config section [training] is not supported"),
    "string for int": ('n = "three"', [], None, "config key 'n' must be int, got str 'three'"),
    "float for int": ("epochs = 2.5", [], None, "config key 'epochs' must be int, got float 2.5"),
    "bool for int": ("seed = true", [], None, "config key 'seed' must be int, got bool True"),
    "string for float": ('learning_rate = "fast"', [], None, "config key 'learning_rate' must be float"),
    "int for bool": ("ckpt_enabled = 1", [], None, "config key 'ckpt_enabled' must be bool, got int 1"),
    "number for node list": ("fault_fail_nodes = 3", [], None, "'fault_fail_nodes' must be a list of strings"),
    "non-finite float": ("min_delta = nan", [], None, "'min_delta' must be a finite number"),
    "n < 2": ("", ["--set", "n=1"], None, "config key 'n' must be >= 2; got 1"),
    "s < 1": ("", ["--set", "s=0"], None, "config key 's' must be >= 1; got 0"),
    "epochs < 1": ("epochs = 0", [], None, "config key 'epochs' must be >= 1; got 0"),
    "patience < 1": ("patience = 0", [], None, "config key 'patience' must be >= 1; got 0"),
    "batch_size < 1": ("", ["--set", "batch_size=0"], None, "config key 'batch_size' must be >= 1; got 0"),
    "group_size < 1": ("group_size = 0", [], None, "config key 'group_size' must be >= 1; got 0"),
    "unknown strategy": ("", ["--set", "strategy='EXP3'"], None, "unknown strategy 'EXP3'; use one of F-20"),
    "unknown order": ('order = "random"', [], None, "config key 'order' must be one of shuffled, ordered"),
    "unknown model": ('model = "huge"', [], None, "config key 'model' must be one of small, paper, tiny"),
    "holdout_fraction out of range": ("holdout_fraction = 0.9", [], None, "'holdout_fraction' must be in [0, 0.5]"),
    "learning_rate 0": ("learning_rate = 0.0", [], None, "'learning_rate' must be > 0"),
    "dropout >= 1": ("dropout = 1.5", [], None, "'dropout' must be < 1"),
    "config file missing": ("<no config file>", [], None, "does not exist"),
    "no data key": ("<no data key>", [], None, "config key 'data' is missing"),
    "--set without =": ("", ["--set", "n"], None, "--set 'n': expected key=value"),
    "--restart with --overwrite": ("", ["--restart", "--overwrite"], None, "give one of them"),
    "ckpt_restart_mode required without --restart": ('ckpt_restart_mode = "required"', [], None, "add --restart"),
    "fault node not in the plan": ('fault_fail_nodes = ["1.9"]', [], None, "names node '1.9', which is not a trained node"),
    "fault node is the root": ("", ["--set", "fault_nan_nodes=1"], None, "names node '1', which is not a trained node"),
    # issue 19 item 8
    "seed >= 2^64": ("seed = 18446744073709551616", [], None, "config key 'seed' must be <= 18446744073709551615"),
    "empty --out": ("", ["--out", ""], None, "the output directory (--out or config key 'out') is empty"),
    "--out with a part over 255 bytes": ("", ["--out", "p" * 300], None, "a part of it is 300 bytes long"),
    "--out over PATH_MAX": ("", ["--out", "/".join(["d" * 200] * 25)], None, "limit (PATH_MAX)"),
}

DATA_CASES = {
    "missing data file": ("", [], "absent", "data file 'data.h5' does not exist"),
    "data path is a directory": ("", [], lambda p: (p.unlink(), p.mkdir()), "is not a regular file"),
    "empty data file": ("", [], lambda p: p.write_bytes(b""), "is not an HDF5 file"),
    "truncated HDF5": ("", [], truncate, "is damaged or truncated"),
    "not an HDF5 file (CSV)": ("", [], lambda p: p.write_text("Sample,Drug1,AUC\nA,B,0.5\n"), "is not an HDF5 file"),
    "HDF5 without Uno keys": ("", [], lambda p: _plain_hdf5(p), "is not a CANDLE Uno file"),
    "HDF5 missing a key": ("", [], lambda p: rewrite(p, "y_test", lambda df: None), "missing key(s) y_test"),
    "x/y row counts differ": ("", [], lambda p: rewrite(p, "x_val_0", lambda df: df.iloc[:-1]), "rows but y_val has"),
    "NaN label": ("", [], lambda p: rewrite(p, "y_train", set_value("AUC", np.nan, 2)), "NaN/inf AUC label"),
    "inf feature": ("", [], lambda p: rewrite(p, "x_val_1", set_value(0, np.inf)), "NaN/inf features"),
    "duplicate (cell, drug) with different labels": ("", [], duplicate_row_other_label,
                                                     "keys appear more than once with different labels"),
    "empty cell id": ("", [], lambda p: rewrite(p, "y_train", set_value("Sample", "")), "empty id(s)"),
    "single cell": ("", [], lambda p: write_dataset(only_cells(tiny_dataset(), 1), p),
                    "n = 2 is larger than the number of cells (1)"),
    "n larger than the cells": ("", ["--set", "n=9"], None, "n = 9 is larger than the number of cells (8)"),
    "results exist, neither --restart nor --overwrite": ("", [], "results exist", "exists: use --restart"),
    "output path below a regular file": ('out = "blocker/out"', [], "blocker", "exists and is not a directory"),
    "unwritable output directory": ("", [], "unwritable", "is not writable"),
    # issue 19 items 1 and 8
    "a plan node without training rows (3 cells, holdout 0.5)": (
        "holdout_fraction = 0.5", [], lambda p: write_dataset(three_cells_one_drug(), p), "have no training rows"),
    "label overflowing float32 training": ("", [], lambda p: rewrite(p, "y_train", set_value("AUC", 1e30, 1)),
                                           "y_train column AUC has 1 value(s) beyond ±1e+18"),
    "feature overflowing float32 training": ("", [], lambda p: rewrite(p, "x_train_0", set_value(1, -3e25, 2)),
                                             "x_train_0 has 1 feature value(s) beyond ±1e+18"),
    "pickled attribute that would run code": ("", [], lambda p: plant_code(p), "refused: node /y_train attribute"),
    "--overwrite with OUT/ckpts a symlink": ("", ["--overwrite"], "ckpts symlink", "ckpts' is a symlink"),
    # issue 28 items 3 and 4: nothing hangs on a planted file, nothing is written outside OUT
    "a FIFO at OUT/.lock": ("", [], "lock fifo", "out/.lock' is a FIFO"),
    "s far beyond the data (s = 100000000)": ("", ["--set", "s=100000000"], None,
                                              "s = 100000000 is deeper than the data allows: at stage 3 every "
                                              "validation set is a single cell"),
    "s one stage beyond the data": ("n = 2\ns = 4", [], None, "the largest useful s is 3"),
    "fresh checkpointed run with OUT/ckpts a symlink": ("ckpt_enabled = true", [], "ckpts symlink fresh",
                                                        "ckpts' is a symlink"),
    "--restart with OUT/results.h5 a FIFO": ("", ["--restart"], "results fifo", "results.h5' is a FIFO"),
    "--restart with OUT/results.h5 a link to /dev/zero": ("", ["--restart"], "results dev zero",
                                                          "results.h5' is a symlink"),
}

CASES = {**CONFIG_CASES, **DATA_CASES}


def _plain_hdf5(path: Path) -> None:
    path.unlink()
    with h5py.File(path, "w") as f:
        f["numbers"] = np.arange(10)


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with a digest of its content ('' for directories)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = ""
        for name in files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[os.path.relpath(p, root)] = "link to " + os.readlink(p)
            elif not stat.S_ISREG(st.st_mode):  # a planted FIFO: reading it would block
                out[os.path.relpath(p, root)] = f"mode {st.st_mode:o}"
            else:
                with open(p, "rb") as f:
                    out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def unwritable_dir(tmp: Path) -> str | None:
    """A directory this process cannot write into (root ignores modes: then a read-only mount)."""
    locked = tmp / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if not os.access(locked, os.W_OK):
        return str(locked / "out")
    locked.chmod(0o700)
    for candidate in ("/proc/sys", "/sys/kernel"):
        if os.path.isdir(candidate) and not os.access(candidate, os.W_OK):
            return os.path.join(candidate, "hbl_out")
    return None


def setup_case(name: str, tmp: Path, good: Path) -> list[str]:
    """Write the case's files into ``tmp``; returns the ``run`` arguments."""
    lines, extra, data, _ = CASES[name]
    data_path = tmp / "data.h5"
    if data != "absent":
        shutil.copy(good, data_path)
    if callable(data):
        data(data_path)
    args = ["--out", "out"]
    if data == "results exist":
        (tmp / "out").mkdir()
        (tmp / "out" / "results.h5").write_bytes(b"an earlier run's results")
    elif data == "ckpts symlink":
        (tmp / "out").mkdir()
        (tmp / "out" / "results.h5").write_bytes(b"an earlier run's results")
        (tmp / "kept").mkdir()
        (tmp / "kept" / "model.pt").write_bytes(b"not ours to delete")
        os.symlink(tmp / "kept", tmp / "out" / "ckpts")
    elif data == "ckpts symlink fresh":
        (tmp / "out").mkdir()
        (tmp / "kept").mkdir()
        (tmp / "kept" / "1.1").mkdir()  # a node-named folder a fresh node would have renamed away
        (tmp / "kept" / "1.1" / "model.pt").write_bytes(b"not ours to delete")
        os.symlink(tmp / "kept", tmp / "out" / "ckpts")
    elif data == "lock fifo":
        (tmp / "out").mkdir()
        os.mkfifo(tmp / "out" / ".lock")
    elif data == "results fifo":
        (tmp / "out").mkdir()
        os.mkfifo(tmp / "out" / "results.h5")
    elif data == "results dev zero":
        (tmp / "out").mkdir()
        os.symlink("/dev/zero", tmp / "out" / "results.h5")
    elif data == "blocker":
        (tmp / "blocker").write_text("a file, not a directory")
        args = []
    elif data == "unwritable":
        target = unwritable_dir(tmp)
        if target is None:
            pytest.skip("no directory here is unwritable for this user")
        args = ["--out", target]
    if lines == "<no config file>":
        return ["missing.toml", *args, *extra]
    text = config_text("", data=None) if lines == "<no data key>" else config_text(lines)
    (tmp / "run.toml").write_text(text)
    return ["run.toml", *args, *extra]


def config_text(lines: str, data: str | None = "data.h5") -> str:
    """BASE with ``lines`` appended; a key ``lines`` sets replaces BASE's (TOML forbids twice)."""
    own = {line.split("=")[0].strip() for line in lines.splitlines() if "=" in line}
    base = [line for line in BASE.strip().splitlines() if line.split("=")[0].strip() not in own]
    head = [f'data = "{data}"'] if data else []
    return "\n".join(head + base + [lines]) + "\n"


def check_rejected(proc, expected: str, before: dict, tmp: Path) -> None:
    err = proc.stderr
    lines = err.strip().splitlines()
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout[-1500:]}\n{err[-3000:]}"
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{err}"
    assert lines[0].startswith("hbl_mpi: error: "), lines[0]
    assert expected in lines[0], f"{expected!r} not in {lines[0]!r}"
    assert snapshot(tmp) == before, "a rejected run wrote something"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_serial(name, tmp_path, good_h5, monkeypatch):
    """In process (``conftest.run_main``): the same ``main`` as ``python -m hbl_mpi``,
    without an interpreter and torch start-up per case."""
    args = setup_case(name, tmp_path, good_h5)
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    proc = run_main(["run", *args, "--serial"])
    check_rejected(proc, CASES[name][3], before, tmp_path)
    assert proc.stdout == ""


@pytest.mark.timeout(60)
def test_bad_input_serial_as_a_process(tmp_path, good_h5):
    """One case through ``python -m hbl_mpi`` itself: the in-process cases above see what a
    user's shell sees."""
    name = next(iter(CASES))
    args = setup_case(name, tmp_path, good_h5)
    before = snapshot(tmp_path)
    proc = run_py(["-m", "hbl_mpi", "run", *args, "--serial"], timeout=50, cwd=tmp_path)
    check_rejected(proc, CASES[name][3], before, tmp_path)
    assert proc.stdout == ""


MPI_CASES = {
    "malformed TOML": ("n = = 3", "is not valid TOML"),
    "NaN label": ("", "NaN/inf AUC label"),
    "group_size not dividing the workers of the host": ("group_size = 4",
                                                        "group_size = 4 does not divide the 2 worker ranks"),
    "fault_crash_rank beyond the world size": ("fault_crash_rank = 5",
                                               "'fault_crash_rank' = 5 but the job has 3 ranks"),
    "seed >= 2^64": ("seed = 18446744073709551616", "config key 'seed' must be <= 18446744073709551615"),
}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("name", [n if n in ("malformed TOML", "NaN label") else
                                  pytest.param(n, marks=pytest.mark.slow) for n in MPI_CASES])
def test_bad_input_mpi_one_message_no_hang(name, tmp_path, good_h5):
    lines, expected = MPI_CASES[name]
    shutil.copy(good_h5, tmp_path / "data.h5")
    if name == "NaN label":
        rewrite(tmp_path / "data.h5", "y_train", set_value("AUC", np.nan, 2))
    (tmp_path / "run.toml").write_text(config_text(lines))
    before = snapshot(tmp_path)
    proc = run_mpi(3, ["-m", "hbl_mpi", "run", "run.toml", "--out", "out"], timeout=80, cwd=tmp_path)
    check_rejected(proc, expected, before, tmp_path)  # one line: printed by rank 0 only


def test_corpus_size():
    """Issue 7 asks for at least 25 cases; the serial and MPI lists together hold them all."""
    assert len(CASES) + len(MPI_CASES) >= 30


# ----------------------------------------------------------------------------- valid edge cases


@pytest.mark.timeout(120)
def test_ids_with_node_separator_and_unicode_run(tmp_path):
    """Cell ids like ``1.2`` (a node's name), ``CCLE.22RV1`` or ``Zelle-ß.π 1`` are data, not
    syntax: the run completes and the results name them exactly as written."""
    ds = tiny_dataset(cells=6)
    ids = np.array(["1.2", "CCLE.22RV1", "Zelle-ß.π 1", "细胞.7", "a..b.", "Ünïcødé/β"], dtype=object)
    drug_ids = np.array(["NSC.757440", "Arzneimittel-α", "d.1", "藥", "NSC.1.2"], dtype=object)
    ds = replace(ds, cell_ids=ids, drug_ids=drug_ids, truth=None)
    write_dataset(ds, tmp_path / "ids.h5")
    (tmp_path / "run.toml").write_text(config_text("s = 2", data="ids.h5"))
    proc = run_py(["-m", "hbl_mpi", "run", "run.toml", "--serial", "--out", "out"], timeout=110, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = tmp_path / "out" / "results.h5"
    nodes = pd.read_hdf(results, "nodes")
    assert (nodes["status"] == "done").all() and nodes["node"].is_unique
    assert set(pd.read_hdf(results, "cell_val")["cell"]) == set(ids)
    plan = pd.read_hdf(results, "plan")
    assert set(plan["cell"]) == set(ids)
    assert set(plan["node"]) == set(nodes["node"])


def test_labels_outside_their_range_are_read_with_one_warning(tmp_path, good_h5):
    """AUC is declared in [0, 1] (docs/design.md §1): rows beyond it are used, with a warning that
    names their count (fitted AUCs slightly above 1 exist in real screens)."""
    data = tmp_path / "data.h5"
    shutil.copy(good_h5, data)
    rewrite(data, "y_train", lambda df: df.assign(AUC=np.where(np.arange(len(df)) < 2, np.float32(1.5), df["AUC"])))
    proc = run_py(["-m", "hbl_mpi", "data", "inspect", "data.h5"], timeout=50, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hbl_mpi: warning: ") and "2 AUC label(s) outside [0, 1]" \
        in lines[0], lines


# ----------------------------------------------------------------------------- issue 28: in-process cases
#
# The same promise (exit 2, one stderr line ``hbl_mpi: error: ...``, nothing written), checked
# by calling ``hbl_mpi.__main__.main`` in this process: no interpreter or torch start-up per
# case. Each entry: name -> (setup(tmp, good_h5) -> argv, expected phrase).


def _run_case(lines: str, extra=()):
    def setup(tmp: Path, good: Path) -> list[str]:
        shutil.copy(good, tmp / "data.h5")
        (tmp / "run.toml").write_text(config_text(lines))
        return ["run", "run.toml", "--serial", "--out", "out", *extra]
    return setup


def _raw_config(text: str, extra=()):
    def setup(tmp: Path, good: Path) -> list[str]:
        shutil.copy(good, tmp / "data.h5")
        (tmp / "run.toml").write_text(text)
        return ["run", "run.toml", "--serial", "--out", "out", *extra]
    return setup


def _config_is_a_directory(tmp: Path, good: Path) -> list[str]:
    (tmp / "cfgdir").mkdir()
    return ["run", "cfgdir", "--serial"]


def _config_is_a_fifo(tmp: Path, good: Path) -> list[str]:
    os.mkfifo(tmp / "run.toml")
    return ["run", "run.toml", "--serial"]


def _npz_case(edit, lines: str = ""):
    """A run on the normalised cache of the good file, after ``edit(arrays, header)``."""
    def setup(tmp: Path, good: Path) -> list[str]:
        import json

        from hbl_mpi.data import read_uno, write_normalised

        npz = tmp / "data.npz"
        write_normalised(read_uno(str(good)), str(npz))
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        header = json.loads(str(arrays["header"]))
        edit(arrays, header)
        arrays["header"] = np.array(json.dumps(header))
        with open(npz, "wb") as f:
            np.savez(f, **arrays)
        (tmp / "run.toml").write_text(config_text(lines, data="data.npz"))
        return ["run", "run.toml", "--serial", "--out", "out"]
    return setup


def _npz_dup_cell(a, h):
    a["cell_ids"] = a["cell_ids"].copy()
    a["cell_ids"][1] = a["cell_ids"][0]


def _npz_label(value):
    def edit(a, h):
        a["label"] = a["label"].copy()
        a["label"][2] = value
    return edit


def _npz_no_cells(a, h):
    keep = [i for i, g in enumerate(h["groups"]) if g["entity"] != "cell"]
    groups = {f"group{j}": a[f"group{i}"] for j, i in enumerate(keep)}
    for k in [k for k in a if k.startswith("group")]:
        del a[k]
    a.update(groups)
    h["groups"] = [h["groups"][i] for i in keep]


def _npz_dup_row(a, h):
    for k in ("cell_index", "drug_index"):
        a[k] = np.r_[a[k], a[k][:1]]
    a["label"] = np.r_[a["label"], a["label"][:1] + np.float32(0.5)].astype(np.float32)


INPROCESS_CASES = {
    # issue 28 item 5: the .npz cache passes the HDF5 reader's validator
    ".npz: duplicated cell ids": (_npz_case(_npz_dup_cell), "cell id(s) appear more than once"),
    ".npz: (cell, drug) twice with different labels": (_npz_case(_npz_dup_row),
                                                      "keys appear more than once with different labels"),
    ".npz: no cell feature group": (_npz_case(_npz_no_cells), "no cell feature group"),
    ".npz: NaN label": (_npz_case(_npz_label(np.nan)), "NaN/inf AUC label(s)"),
    ".npz: 1e30 label": (_npz_case(_npz_label(1e30)), "AUC label(s) beyond ±1e+18"),
    "strategy flat with 23 digits": (_run_case('strategy = "flat:99999999999999999999999"'),
                                     "strategy 'flat:99999999999999999999999': epochs must be <= 10000"),
    "epochs = 10^9 for EXP2": (_run_case('strategy = "EXP2"\nepochs = 1000000000'),
                               "config key 'epochs' must be <= 10000"),
    "threads = 100000000": (_run_case("threads = 100000000"), "config key 'threads' must be <= 1024"),
    "threads = 1e8": (_run_case("threads = 1e8"), "config key 'threads' must be int, got float"),
    "--set threads=100000000": (_run_case("", ["--set", "threads=100000000"]), "config key 'threads' must be <= 1024"),
    "batch_size beyond int32": (_run_case("batch_size = 9999999999999"), "config key 'batch_size' must be <="),
    "patience 10^12": (_run_case("patience = 1000000000000"), "config key 'patience' must be <= 10000"),
    "stall_seconds of a century": (_run_case("stall_seconds = 3.2e9"), "config key 'stall_seconds' must be <="),
    "deeply nested TOML": (_raw_config('data = "data.h5"\nx = ' + "[" * 5000 + "]" * 5000 + "\n"),
                           "values nested too deeply"),
    "deeply nested --set": (_run_case("", ["--set", "n=" + "[" * 5000 + "]" * 5000]), "value nested too deeply"),
    "config over 32 KiB as JSON (HDF5 attribute limit)": (
        _run_case('ckpt_directory = "' + "c" * 70_000 + '"'),
        "bytes as JSON, more than the 32,768 that results.h5 can record (largest key: 'ckpt_directory')"),
    "thousands of fault nodes": (
        _run_case("fault_fail_nodes = [" + ", ".join(f'"1.{i}"' for i in range(9000)) + "]"),
        "more than the 32,768 that results.h5 can record (largest key: 'fault_fail_nodes')"),
    "data synth with 10^11 cells": (lambda tmp, good: ["data", "synth", "--cells", "100000000000", "--out", "x.h5"],
                                    "cells = 100000000000: need <= 1,000,000"),
    "data synth of a terabyte": (lambda tmp, good: ["data", "synth", "--cells", "1000000", "--drugs", "100000",
                                                    "--out", "x.h5"], "GiB; at most 64 GiB"),
    "data synth with noise 1e308": (lambda tmp, good: ["data", "synth", "--noise", "1e308", "--out", "x.h5"],
                                    "noise = 1e+308: need <= 10"),
    "config is a directory": (_config_is_a_directory, "'cfgdir' is a directory; give the config file"),
    "config is a FIFO": (_config_is_a_fifo, "'run.toml' is not a regular file"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(INPROCESS_CASES))
def test_bad_input_in_process(name, tmp_path, good_h5, monkeypatch, capsys):
    from hbl_mpi.__main__ import main

    setup, expected = INPROCESS_CASES[name]
    argv = setup(tmp_path, good_h5)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path) if not any(p.is_fifo() for p in tmp_path.iterdir()) else None
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("hbl_mpi: error: "), err[-3000:]
    assert expected in lines[0], f"{expected!r} not in {lines[0]!r}"
    if before is not None:
        assert snapshot(tmp_path) == before, "a rejected command wrote something"
