"""The cached normalised data set (hbl_mpi/data/normalised.py, ``data normalise``).

The cache must be the same data as its Uno file (same checksum, so a run's fingerprint
and its restart do not depend on which file it was given), a run on it must give the
same node table, and a damaged or foreign file must be a one-line input error.
"""

from __future__ import annotations

import zipfile

import numpy as np
import pandas as pd
import pytest

from mpiutil import run_py


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from hbl_mpi.data import synthesize, write_uno

    root = tmp_path_factory.mktemp("normalised")
    h5 = root / "d.h5"
    write_uno(synthesize("small", seed=4, cells=30, drugs=8), str(h5))
    npz = root / "d.npz"
    proc = run_py(["-m", "hbl_mpi", "data", "normalise", str(h5), "--out", str(npz)], timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wrote" in proc.stdout
    return root, h5, npz


def test_cache_is_the_same_data(files):
    from hbl_mpi.data import read_data, read_uno

    _, h5, npz = files
    a, b = read_uno(str(h5)), read_data(str(npz))
    assert a.checksum() == b.checksum()
    assert [(g.name, g.entity, g.columns) for g in a.groups] == [(g.name, g.entity, g.columns) for g in b.groups]
    assert list(a.cell_ids) == list(b.cell_ids) and list(a.drug_ids) == list(b.drug_ids)
    pd.testing.assert_frame_equal(a.truth, b.truth)
    assert (a.label_name, a.source) == (b.label_name, b.source)
    assert b.groups[0].values.dtype == np.float32 and b.meta["normalised_file"]
    assert npz.stat().st_size < h5.stat().st_size / 5  # no duplicated rows


@pytest.mark.slow  # default tier: test_cache_is_the_same_data (same tables and checksum)
@pytest.mark.timeout(300)
def test_run_on_the_cache_gives_the_same_nodes(files):
    root, h5, npz = files
    sets = ["--set", "n=2", "--set", "s=2", "--set", "strategy='flat:2'", "--set", "model='tiny'",
            "--set", "threads=1", "--set", "batch_size=64"]
    tables = []
    for data in (h5, npz):
        out = root / f"run_{data.suffix[1:]}"
        proc = run_py(["-m", "hbl_mpi", "run", "--serial", "--set", f"data='{data}'", *sets, "--out", str(out)],
                      timeout=280)
        assert proc.returncode == 0, proc.stderr[-2000:]
        tables.append(pd.read_hdf(out / "results.h5", "nodes").set_index("node").sort_index())
    np.testing.assert_array_equal(tables[0]["val_loss"], tables[1]["val_loss"])
    assert list(tables[0]["inherit_checksum"]) == list(tables[1]["inherit_checksum"])


def test_foreign_and_damaged_files_are_input_errors(files, tmp_path):
    from hbl_mpi.data import read_data
    from hbl_mpi.core.errors import InputError

    _, _, npz = files
    foreign = tmp_path / "other.npz"
    with zipfile.ZipFile(foreign, "w") as z:
        z.writestr("readme.txt", "not a data set")
    with pytest.raises(InputError, match="not a normalised data set"):
        read_data(str(foreign))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    with pytest.raises(InputError):
        read_data(str(cut))
    # a hand-edited cache whose indices point past the tables
    with np.load(npz, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["cell_index"] = arrays["cell_index"] + 1000
    bad = tmp_path / "bad.npz"
    with open(bad, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(InputError, match="cell index is outside"):
        read_data(str(bad))


def test_normalise_missing_input_exits_2(tmp_path):
    proc = run_py(["-m", "hbl_mpi", "data", "normalise", str(tmp_path / "nope.h5"), "--out", str(tmp_path / "x.npz")],
                  timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("hbl_mpi: error:")
    assert not (tmp_path / "x.npz").exists()


# ----------------------------------------------------------------------------- issue 28 item 5: one validator


def _edited(npz, tmp_path, name, edit):
    """A copy of the cache with ``edit(arrays, header)`` applied (a hand-made or damaged cache)."""
    import json

    with np.load(npz, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(str(arrays["header"]))
    edit(arrays, header)
    arrays["header"] = np.array(json.dumps(header))
    out = tmp_path / name
    with open(out, "wb") as f:
        np.savez(f, **arrays)
    return out


def _dup_cell_id(a, h):
    a["cell_ids"] = a["cell_ids"].copy()
    a["cell_ids"][1] = a["cell_ids"][0]


def _dup_row_other_label(a, h):
    for k in ("cell_index", "drug_index"):
        a[k] = np.r_[a[k], a[k][:1]]
    a["label"] = np.r_[a["label"], a["label"][:1] + np.float32(0.25)].astype(np.float32)


def _no_cell_group(a, h):
    keep = [i for i, g in enumerate(h["groups"]) if g["entity"] != "cell"]
    groups = {f"group{j}": a.pop(f"group{i}") for j, i in enumerate(keep)}
    for k in [k for k in a if k.startswith("group")]:
        del a[k]
    a.update(groups)
    h["groups"] = [h["groups"][i] for i in keep]
    h["truth"] = None


def _label(value):
    def edit(a, h):
        a["label"] = a["label"].copy()
        a["label"][3] = value
    return edit


def _long_id(a, h):
    ids = a["cell_ids"].astype(object)
    ids[0] = "x" * 300
    a["cell_ids"] = ids.astype(str)
    h["truth"] = None


NPZ_CASES = {
    "duplicated cell ids": (_dup_cell_id, "cell id(s) appear more than once"),
    "duplicated (cell, drug) rows with different labels": (_dup_row_other_label,
                                                            "keys appear more than once with different labels"),
    "no cell feature group": (_no_cell_group, "no cell feature group"),
    "NaN label": (_label(np.nan), "NaN/inf AUC label(s)"),
    "1e30 label": (_label(1e30), "AUC label(s) beyond ±1e+18"),
    "id over 256 characters": (_long_id, "longer than 256 characters"),
}


@pytest.mark.parametrize("name", list(NPZ_CASES))
def test_npz_passes_the_one_validator(files, tmp_path, capsys, name):
    """Issue 28 item 5: the .npz reader refuses what the HDF5 reader refuses (exit 2, one line);
    before, each of these read (and trained) with exit 0, or 3 for the NaN label."""
    from hbl_mpi.__main__ import main

    edit, expected = NPZ_CASES[name]
    _, _, npz = files
    bad = _edited(npz, tmp_path, "bad.npz", edit)
    assert main(["data", "inspect", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hbl_mpi: error: data file") and expected in err[0], err


def test_both_readers_call_the_same_validator(files, monkeypatch):
    """One validator, two readers: both call ``validate_dataset`` once with the data they read."""
    import hbl_mpi.data.normalised as normalised
    import hbl_mpi.data.uno_h5 as uno_h5
    from hbl_mpi.data import read_data
    from hbl_mpi.data import validate

    seen = []
    real = validate.validate_dataset

    def spy(ds, where):
        seen.append(where)
        return real(ds, where)

    monkeypatch.setattr(normalised, "validate_dataset", spy)
    monkeypatch.setattr(uno_h5, "validate_dataset", spy)
    _, h5, npz = files
    read_data(str(h5))
    read_data(str(npz))
    assert seen == [f"data file {str(h5)!r}", f"data file {str(npz)!r}"]
    assert normalised.validate_dataset is uno_h5.validate_dataset is spy


def test_hdf5_ids_longer_than_the_bound_are_refused(tmp_path, capsys):
    """Issue 28 item 8: a 1M-character cell id made a 1 GB results.h5; now exit 2 at read."""
    from dataclasses import replace

    from hbl_mpi.__main__ import main
    from hbl_mpi.data import synthesize, write_uno

    ds = synthesize("small", seed=4, cells=6, drugs=3, cell_features=3, descriptors=2, fingerprints=0,
                    anomaly_fraction=0.0)
    ids = ds.cell_ids.copy()
    ids[2] = "c" * 100_000
    path = tmp_path / "long.h5"
    with pytest.raises(Exception, match="longer than 256 characters"):
        write_uno(replace(ds, cell_ids=ids, truth=None), str(path))  # the writer validates too
    # a file written by another tool: bypass the writer's check
    import hbl_mpi.data.uno_write as uno_write

    orig = uno_write.validate_dataset
    uno_write.validate_dataset = lambda ds, where: None
    try:
        write_uno(replace(ds, cell_ids=ids, truth=None), str(path))
    finally:
        uno_write.validate_dataset = orig
    assert main(["data", "inspect", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 cell id(s) are longer than 256 characters (longest: 100,000" in err[0], err


@pytest.mark.timeout(30)
def test_data_path_that_is_a_fifo_is_refused(tmp_path, capsys):
    """Telling .npz from HDF5 opened the path: a FIFO given as data blocked the command forever."""
    import os

    from hbl_mpi.__main__ import main

    fifo = tmp_path / "data.npz"
    os.mkfifo(fifo)
    assert main(["data", "inspect", str(fifo)]) == 2
    assert "is not a regular file" in capsys.readouterr().err
