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
