"""Data layer: Uno HDF5 round trip, the normalised form against the duplicated rows, every
bad-input case as a one-line exit 2, and the synthetic generator's determinism and anomalies.

Files are tiny (tens of cells, a few features) so the whole module runs in seconds; the
CLI cases run ``hbl_mpi.__main__.main`` in-process (what ``python -m hbl_mpi`` calls) and a
few of them also as real ``python -m hbl_mpi`` subprocesses.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from hbl_mpi.__main__ import main
from hbl_mpi.data import read_uno, synthesize, write_uno
from hbl_mpi.data.dataset import CELL
from hbl_mpi.core.errors import InputError

TINY = dict(cells=30, drugs=12, cell_features=8, descriptors=6, fingerprints=5, density=0.7,
            anomaly_fraction=0.2)
PARTS = ("train", "val", "test")


def tiny(seed=3, **over):
    return synthesize("small", seed=seed, **{**TINY, **over})


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A tiny synthetic data set and the Uno file it was written to."""
    ds = tiny()
    path = str(tmp_path_factory.mktemp("data") / "tiny.h5")
    write_uno(ds, path, seed=5)
    return ds, path


def triples(ds):
    """Responses as a sorted frame of (cell id, drug id, label), independent of row order."""
    df = pd.DataFrame({"cell": ds.cell_ids[ds.cell_index], "drug": ds.drug_ids[ds.drug_index],
                       "label": ds.label})
    return df.sort_values(["cell", "drug"]).reset_index(drop=True)


# ----------------------------------------------------------------------------- round trip


def test_write_read_round_trip(written):
    ds, path = written
    back = read_uno(path)
    assert list(back.cell_ids) == list(ds.cell_ids)
    assert list(back.drug_ids) == list(ds.drug_ids)
    assert [g.name for g in back.groups] == [g.name for g in ds.groups]
    for a, b in zip(ds.groups, back.groups):
        assert a.columns == b.columns and a.entity == b.entity
        np.testing.assert_array_equal(a.values, b.values)
    pd.testing.assert_frame_equal(triples(ds), triples(back))
    pd.testing.assert_frame_equal(ds.truth.reset_index(drop=True), back.truth)
    assert back.label_name == "AUC" and back.dose is None
    assert back.meta["identical_duplicates"] == 0
    assert sum(back.meta["partition_rows"].values()) == ds.n_rows
    assert back.summary()["normalized_bytes"] == ds.summary()["normalized_bytes"]
    # a second round trip changes nothing but the row order (the split permutes rows)
    path2 = path + ".again.h5"
    write_uno(back, path2, seed=5)
    pd.testing.assert_frame_equal(triples(read_uno(path2)), triples(ds))


def test_pandas_sees_top21_layout(written):
    ds, path = written
    y = pd.read_hdf(path, "y_train")
    assert {"AUC", "Sample", "Drug1"} <= set(y.columns)
    with pd.HDFStore(path, "r") as st:
        keys = {k.lstrip("/") for k in st.keys()}
    for p in PARTS:
        assert {f"y_{p}", f"x_{p}_0", f"x_{p}_1", f"x_{p}_2"} <= keys
    assert {"model", "truth"} <= keys
    x0 = pd.read_hdf(path, "x_train_0")
    assert x0.shape == (len(y), 8) and (x0.dtypes == np.float32).all()
    assert pd.read_hdf(path, "x_train_1").shape == (len(y), 6)
    assert pd.read_hdf(path, "x_train_2").shape == (len(y), 5)
    assert sum(len(pd.read_hdf(path, f"y_{p}")) for p in PARTS) == ds.n_rows


def test_normalised_form_reproduces_duplicated_rows(written):
    """Every x_*/y_* row pandas reads is the normalised tables gathered by (Sample, Drug1)."""
    _, path = written
    ds = read_uno(path)
    cell_at = {c: i for i, c in enumerate(ds.cell_ids)}
    drug_at = {d: i for i, d in enumerate(ds.drug_ids)}
    start = 0
    for p in PARTS:
        y = pd.read_hdf(path, f"y_{p}")
        rows = slice(start, start + len(y))  # the reader keeps file order: train, val, test
        start += len(y)
        c = np.array([cell_at[s] for s in y["Sample"]])
        d = np.array([drug_at[s] for s in y["Drug1"]])
        np.testing.assert_array_equal(ds.cell_index[rows], c)
        np.testing.assert_array_equal(ds.drug_index[rows], d)
        np.testing.assert_array_equal(ds.label[rows], y["AUC"].to_numpy(np.float32))
        for k, g in enumerate(ds.groups):
            x = pd.read_hdf(path, f"x_{p}_{k}").to_numpy()
            ent = c if g.entity == CELL else d
            np.testing.assert_array_equal(g.values[ent], x)  # exact, float32 bit for bit
    assert start == ds.n_rows


# ----------------------------------------------------------------------------- bad input


def _rewrite(path, key, fn):
    """Replace table ``key`` by ``fn(df)`` (or delete it when fn returns None)."""
    with pd.HDFStore(path, "a") as st:
        df = st.select(key)
        new = fn(df)
        st.remove(key)
        if new is not None:
            st.append(key, new, format="table", index=False)


def _set(df, row, col, value):
    df = df.copy()
    df.iloc[row, col] = value
    return df


def _text_column(df, col):
    """Column ``col`` as text (PyTables stores an object column only when all of it is text)."""
    df = df.copy()
    name = df.columns[col]
    df[name] = df[name].map(lambda v: f"{v:.3f}").astype(object)
    df.iloc[0, col] = "high"
    return df


def _duplicate_pair(path):
    """Append a copy of y_train's row 0 (same cell, same drug, same features) with another AUC."""
    with pd.HDFStore(path, "a") as st:
        n = st.get_storer("y_train").nrows
        for key in ("x_train_0", "x_train_1", "x_train_2", "y_train"):
            df = st.select(key)
            extra = df.iloc[[0]].copy()
            extra.index = [n]
            if key == "y_train":
                extra["AUC"] = np.float32(extra["AUC"].iloc[0] + 0.25)
            st.remove(key)
            st.append(key, pd.concat([df, extra]), format="table", index=False,
                      **({"min_itemsize": {"Sample": 20, "Drug1": 20}} if key == "y_train" else {}))


def _differing_cell(path):
    """Change one expression value in a later row of a cell that has several rows."""
    y = pd.read_hdf(path, "y_train")
    cell = y["Sample"].iloc[0]
    later = np.flatnonzero(y["Sample"].to_numpy() == cell)[1]
    _rewrite(path, "x_train_0", lambda df: _set(df, later, 0, float(df.iloc[later, 0]) + 1.0))
    return cell


def _truncate(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)


BAD = {
    "missing x key": (lambda p: _rewrite(p, "x_val_1", lambda df: None), "missing key(s) x_val_1"),
    "missing y key": (lambda p: _rewrite(p, "y_test", lambda df: None), "missing key(s) y_test"),
    "x/y row mismatch": (lambda p: _rewrite(p, "x_train_0", lambda df: df.iloc[:-1]), "x_train_0 has"),
    "non-numeric feature": (lambda p: _rewrite(p, "x_train_1", lambda df: _text_column(df, 1)), "non-numeric column"),
    "NaN feature": (lambda p: _rewrite(p, "x_val_0", lambda df: _set(df, 1, 3, np.nan)), "NaN/inf features"),
    "inf feature": (lambda p: _rewrite(p, "x_test_2", lambda df: _set(df, 0, 0, np.inf)), "NaN/inf features"),
    "non-numeric label": (lambda p: _rewrite(p, "y_val", lambda df: _text_column(df, 0)), "label column AUC is not numeric"),
    "NaN label": (lambda p: _rewrite(p, "y_train", lambda df: _set(df, 4, 0, np.nan)), "NaN/inf AUC"),
    "inf label": (lambda p: _rewrite(p, "y_test", lambda df: _set(df, 0, 0, -np.inf)), "NaN/inf AUC"),
    "duplicate pair, different labels": (_duplicate_pair, "more than once with different labels"),
    "cell with differing feature rows": (_differing_cell, "differing cell.rnaseq feature rows"),
    "not an HDF5 file": (lambda p: open(p, "w").write("Sample,Drug1,AUC\n"), "is not an HDF5 file"),
    "truncated file": (_truncate, "damaged or truncated"),
}


def _bad_file(written, tmp_path, case):
    _, good = written
    path = str(tmp_path / "bad.h5")
    shutil.copy(good, path)
    BAD[case][0](path)
    return path


def _check_one_line(rc, err, expected):
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("hbl_mpi: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_file_exits_2_with_one_line(written, tmp_path, capsys, case):
    path = _bad_file(written, tmp_path, case)
    rc = main(["data", "inspect", path])
    out, err = capsys.readouterr()
    _check_one_line(rc, err, BAD[case][1])
    assert out == ""


def test_missing_file_exits_2(tmp_path, capsys):
    rc = main(["data", "inspect", str(tmp_path / "nope.h5")])
    _check_one_line(rc, capsys.readouterr().err, "does not exist")


def test_differing_cell_message_names_the_cell(written, tmp_path):
    _, good = written
    path = str(tmp_path / "bad.h5")
    shutil.copy(good, path)
    cell = _differing_cell(path)
    with pytest.raises(InputError, match=f"first: {cell}"):
        read_uno(path)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", ["NaN label", "not an HDF5 file"])
def test_bad_file_subprocess(written, tmp_path, case):
    """The same through the real ``python -m hbl_mpi`` entry point (exit status, stderr)."""
    path = _bad_file(written, tmp_path, case)
    r = subprocess.run([sys.executable, "-m", "hbl_mpi", "data", "inspect", path],
                       capture_output=True, text=True, timeout=100)
    _check_one_line(r.returncode, r.stderr, BAD[case][1])


# ----------------------------------------------------------------------------- CLI


@pytest.mark.timeout(120)
def test_synth_and_inspect_json_cli(tmp_path):
    out = str(tmp_path / "s.h5")
    args = ["--seed", "7", "--out", out, "--cells", "20", "--drugs", "6", "--cell-features", "4",
            "--descriptors", "3", "--fingerprints", "2", "--anomaly-fraction", "0.3"]
    r = subprocess.run([sys.executable, "-m", "hbl_mpi", "data", "synth", *args],
                       capture_output=True, text=True, timeout=100)
    assert r.returncode == 0, r.stderr
    assert not any(n.endswith(".tmp") for n in os.listdir(tmp_path))
    r = subprocess.run([sys.executable, "-m", "hbl_mpi", "data", "inspect", out, "--json"],
                       capture_output=True, text=True, timeout=100)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    expected = synthesize("small", seed=7, cells=20, drugs=6, cell_features=4, descriptors=3, fingerprints=2,
                          anomaly_fraction=0.3).summary()
    for key in ("cells", "drugs", "rows", "feature_widths", "normalized_bytes", "duplicated_bytes", "truth"):
        assert summary[key] == expected[key], key
    assert summary["feature_widths"] == {"cell.rnaseq": 4, "drug.descriptors": 3, "drug.fingerprints": 2}
    assert set(summary["truth"]) <= {"label_noise", "shift", "swap"} and sum(summary["truth"].values()) >= 6
    assert summary["duplicated_bytes"] == summary["rows"] * (4 + 3 + 2 + 1) * 4


def test_inspect_text(written, capsys):
    _, path = written
    assert main(["data", "inspect", path]) == 0
    out = capsys.readouterr().out
    assert "cells 30" in out and "truth:" in out and "normalized" in out and "duplicated" in out


@pytest.mark.parametrize("argv, expected", [
    (["--anomaly-kinds", "label_noise,bogus"], "unknown kind"),
    (["--cells", "1"], "need at least 2"),
    (["--density", "1.5"], "density"),
])
def test_synth_bad_options_exit_2(tmp_path, capsys, argv, expected):
    out = tmp_path / "x.h5"
    rc = main(["data", "synth", "--out", str(out), *argv])
    _check_one_line(rc, capsys.readouterr().err, expected)
    assert not out.exists() and os.listdir(tmp_path) == []


def test_top21_preset_shape_normalised_under_one_percent():
    """The top21 preset's shape (no file written: the arithmetic of the sizes themselves)."""
    ds = synthesize("top21", seed=0)
    s = ds.summary()
    assert s["rows"] == 529_940 and s["feature_widths"] == {"cell.rnaseq": 942, "drug.descriptors": 5270}
    assert s["duplicated_bytes"] == 529_940 * (942 + 5270 + 1) * 4
    assert s["normalized_bytes"] < 0.01 * s["duplicated_bytes"]


# ----------------------------------------------------------------------------- generator


def test_generator_deterministic_per_seed():
    a, b, c = tiny(seed=11), tiny(seed=11), tiny(seed=12)
    assert a.checksum() == b.checksum()
    pd.testing.assert_frame_equal(a.truth, b.truth)
    assert a.checksum() != c.checksum()


def test_written_file_deterministic(tmp_path):
    p1, p2 = str(tmp_path / "a.h5"), str(tmp_path / "b.h5")
    for p in (p1, p2):
        write_uno(tiny(seed=4), p, seed=4)
    a, b = read_uno(p1), read_uno(p2)
    assert a.checksum() == b.checksum()
    for p in PARTS:
        pd.testing.assert_frame_equal(pd.read_hdf(p1, f"y_{p}"), pd.read_hdf(p2, f"y_{p}"))


def test_anomalies_present_with_recorded_kinds():
    """Compare with the same seed and no anomalies: exactly the recorded cells changed, as their kind says."""
    kw = dict(cells=60, drugs=20, density=0.8, anomaly_fraction=0.15)
    ds = tiny(seed=21, **kw)
    clean = tiny(seed=21, **{**kw, "anomaly_fraction": 0.0})
    assert clean.truth is None
    truth = dict(zip(ds.truth["cell"], ds.truth["kind"]))
    assert set(truth.values()) == {"label_noise", "shift", "swap"}
    assert len(truth) >= round(0.15 * 60)
    np.testing.assert_array_equal(ds.cell_index, clean.cell_index)
    np.testing.assert_array_equal(ds.drug_index, clean.drug_index)
    expr, expr0 = ds.groups[0].values, clean.groups[0].values
    at = {c: i for i, c in enumerate(ds.cell_ids)}
    swapped = {c for c, k in truth.items() if k == "swap"}
    assert len(swapped) % 2 == 0
    for c in ds.cell_ids:
        i = at[c]
        rows = ds.cell_index == i
        kind = truth.get(c)
        lab, lab0 = ds.label[rows].astype(float), clean.label[rows].astype(float)
        if kind is None:
            np.testing.assert_array_equal(lab, lab0)
            np.testing.assert_array_equal(expr[i], expr0[i])
        elif kind == "shift":
            np.testing.assert_array_equal(expr[i], expr0[i])
            assert abs(np.mean(lab - lab0)) > 0.1  # about 0.25 AUC, less what clipping to [0, 1] eats
            assert np.all(np.sign(lab - lab0)[lab != lab0] == np.sign(np.mean(lab - lab0)))
        elif kind == "label_noise":
            np.testing.assert_array_equal(expr[i], expr0[i])
            assert np.mean(lab != lab0) > 0.8
        else:  # swap: the profile is another swapped cell's clean profile, the labels stay
            np.testing.assert_array_equal(lab, lab0)
            partners = [at[o] for o in swapped if o != c and np.array_equal(expr[i], expr0[at[o]])]
            assert len(partners) == 1
            assert np.array_equal(expr[partners[0]], expr0[i])
    for g, g0 in zip(ds.groups[1:], clean.groups[1:]):  # drugs are never corrupted
        np.testing.assert_array_equal(g.values, g0.values)


def test_misid_copies_a_clean_look_alike_and_keeps_its_responses():
    """A misid cell's profile is a near copy of one clean cell of its tissue (a partner used once),
    the one whose responses differ most; its own labels and every other cell stay as without anomalies."""
    kw = dict(cells=60, drugs=20, density=0.8, anomaly_fraction=0.1, anomaly_kinds=("misid", "shift"))
    ds = tiny(seed=22, **kw)
    clean = tiny(seed=22, **{**kw, "anomaly_fraction": 0.0})
    truth = dict(zip(ds.truth["cell"], ds.truth["kind"]))
    misid_of = ds.meta["misid_of"]
    assert set(misid_of) == {c for c, k in truth.items() if k == "misid"} and len(misid_of) == 3
    assert len(set(misid_of.values())) == len(misid_of) and not set(misid_of.values()) & set(truth)
    at = {c: i for i, c in enumerate(ds.cell_ids)}
    expr, expr0 = ds.groups[0].values, clean.groups[0].values
    tissue = ds.meta["tissue"]
    prof = pd.DataFrame({"c": clean.cell_index, "d": clean.drug_index, "y": clean.label}).pivot(
        index="c", columns="d", values="y")
    for b, y in misid_of.items():
        i, j = at[b], at[y]
        rows = ds.cell_index == i
        np.testing.assert_array_equal(ds.label[rows], clean.label[rows])  # responses stay its own
        assert np.abs(expr[i] - expr0[j]).std() < 0.1 < np.abs(expr0[i] - expr0[j]).std()  # a near copy
        np.testing.assert_array_equal(expr[j], expr0[j])  # the partner is untouched
        assert tissue[y] == tissue[b]
        mates = [c for c in ds.cell_ids if tissue[c] == tissue[b] and c not in truth and c != b]
        diff = {c: np.nanmean((prof.loc[at[c]] - prof.loc[i]) ** 2) for c in mates}
        assert diff[y] >= max(v for c, v in diff.items() if c not in misid_of.values() or c == y) - 1e-12


def test_data_command_kinds_are_synths():
    from hbl_mpi.commands import data as data_command
    from hbl_mpi.data import synth

    assert data_command.KINDS == synth.KINDS


def test_synth_creates_the_output_folder(tmp_path, capsys):
    """The README's first command writes demo/small.h5 on a fresh clone, where demo/ does not exist."""
    out = tmp_path / "demo" / "small.h5"
    assert main(["data", "synth", "--preset", "small", "--seed", "1", "--cells", "12", "--drugs", "5",
                 "--out", str(out)]) == 0
    assert out.exists()
    bad = tmp_path / "never"
    assert main(["data", "synth", "--cells", "1", "--out", str(bad / "x.h5")]) == 2
    assert not bad.exists()  # bad options: nothing created
