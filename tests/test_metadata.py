"""Cell metadata (issue 30 part 1): read, checked, stored in the data file and results, read back."""

import gzip
import os

import numpy as np
import pandas as pd
import pytest

from hbl_mpi.__main__ import main
from hbl_mpi.core.errors import InputError
from hbl_mpi.data import metadata as M
from hbl_mpi.data import read_normalised, read_uno, synthesize, write_normalised, write_uno
from hbl_mpi.data.annotate import annotate, default_out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("meta")
    ds = synthesize("small", seed=2, cells=24, drugs=8)
    path = d / "s.h5"
    write_uno(ds, str(path))
    return ds, str(path)


def _csv(path, cells, **cols):
    pd.DataFrame({"cell": list(cells), **{k: list(v) for k, v in cols.items()}}).to_csv(path, index=False)
    return str(path)


def test_csv_checks_name_the_problem(tmp_path, small):
    ds, _ = small
    ids = list(ds.cell_ids)
    cases = {
        "not in the data": _csv(tmp_path / "a.csv", ids[:3] + ["NOPE"], lab=list("abcd")),
        "duplicated cell": _csv(tmp_path / "b.csv", ids[:3] + ids[:1], lab=list("abcd")),
        "column 'e' is empty": _csv(tmp_path / "c.csv", ids[:3], lab=list("abc"), e=["", "", ""]),
        "no 'cell' column": str(tmp_path / "d.csv"),
    }
    pd.DataFrame({"name": ids[:2], "lab": ["a", "b"]}).to_csv(cases["no 'cell' column"], index=False)
    for match, path in cases.items():
        with pytest.raises(InputError, match=match):
            M.attach(ds, M.read_metadata_csv(path), "t")


def test_cells_without_metadata_are_counted_and_kept(tmp_path, small):
    ds, _ = small
    ids = list(ds.cell_ids)
    out, info = M.attach(ds, M.read_metadata_csv(_csv(tmp_path / "m.csv", ids[:20][::-1], lab=["x"] * 20,
                                                      num=np.arange(20.0))), "t")
    assert (info.cells, info.with_metadata, info.without) == (24, 20, 4)
    assert "4 cell(s) have none" in info.line()
    assert out.n_cells == 24 and list(out.cell_metadata["cell"]) == ids[:20]  # the data's order
    assert out.cell_metadata["num"].iloc[0] == "19.0"  # a CSV's text is kept as written
    direct, _ = M.attach(ds, pd.DataFrame({"cell": ids[:2], "id": [906794.0, np.nan]}), "t")
    assert list(direct.cell_metadata["id"]) == ["906794", ""]  # integral floats in a table: ids, not "906794.0"


def test_stored_in_both_file_forms_outside_the_checksum(tmp_path, small):
    ds, _ = small
    meta = pd.DataFrame({"cell": ds.cell_ids[:10], "lab": ["L1", "L2"] * 5, "note": [""] * 9 + ["n"]})
    with_meta, _ = M.attach(ds, meta, "t")
    write_uno(with_meta, str(tmp_path / "a.h5"))
    a = read_uno(str(tmp_path / "a.h5"))
    pd.testing.assert_frame_equal(a.cell_metadata, with_meta.cell_metadata)
    write_normalised(a, str(tmp_path / "a.npz"))
    b = read_normalised(str(tmp_path / "a.npz"))
    pd.testing.assert_frame_equal(b.cell_metadata, with_meta.cell_metadata)
    write_uno(ds, str(tmp_path / "plain.h5"))
    assert a.checksum() == b.checksum() == read_uno(str(tmp_path / "plain.h5")).checksum()
    sub = a.subset_cells(list(ds.cell_ids[:4]))
    assert list(sub.cell_metadata["cell"]) == list(ds.cell_ids[:4])


def test_annotate_never_overwrites_its_input(tmp_path, small, capsys):
    ds, src = small
    path = tmp_path / "f.h5"
    path.write_bytes(open(src, "rb").read())
    before = path.read_bytes()
    csv = _csv(tmp_path / "m.csv", ds.cell_ids[:5], lab=list("aabbc"))
    assert main(["data", "annotate", str(path), "--cell-metadata", csv]) == 0
    out = default_out(str(path))
    assert out.endswith("f.annotated.h5") and path.read_bytes() == before
    assert list(read_uno(out).cell_metadata["lab"]) == list("aabbc")
    assert "5 of 24 cells" in capsys.readouterr().out
    assert main(["data", "annotate", str(path), "--cell-metadata", csv, "--out", str(path)]) == 2
    assert path.read_bytes() == before and "never overwrites" in capsys.readouterr().err
    bad = _csv(tmp_path / "bad.csv", ["NOPE"], lab=["a"])
    assert main(["data", "annotate", str(path), "--cell-metadata", bad, "--out", str(tmp_path / "g.h5")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NOPE" in err[0] and not (tmp_path / "g.h5").exists()
    # the normalised form: annotated into F.annotated.npz
    write_normalised(read_uno(str(path)), str(tmp_path / "f.npz"))
    info = annotate(str(tmp_path / "f.npz"), csv, default_out(str(tmp_path / "f.npz")))
    assert info.with_metadata == 5 and read_normalised(str(tmp_path / "f.annotated.npz")).cell_metadata is not None


def test_data_synth_takes_cell_metadata(tmp_path):
    ds = synthesize("small", seed=4, cells=12, drugs=6)
    csv = _csv(tmp_path / "m.csv", ds.cell_ids[:3], lab=list("abc"))
    out = tmp_path / "x.h5"
    assert main(["data", "synth", "--cells", "12", "--drugs", "6", "--seed", "4", "--out", str(out),
                 "--cell-metadata", csv]) == 0
    assert list(read_uno(str(out)).cell_metadata["lab"]) == list("abc")
    assert main(["data", "synth", "--cells", "12", "--drugs", "6", "--seed", "4", "--out", str(tmp_path / "y.h5"),
                 "--cell-metadata", str(tmp_path / "none.csv")]) == 2
    assert not (tmp_path / "y.h5").exists()


def test_cosmic_rows_match_by_name_key_and_ambiguous_keys_stay_unmatched(tmp_path):
    cos = pd.DataFrame({"SAMPLE_NAME": ["PFSK-1", "KM-H2", "KMH-2", "A253"], "COSMIC_ID": [1, 2, 3, 4],
                        "GDSC1": ["nervous", "blood", "thyroid", "aero"], "GROWTH_PROPERTIES": ["Adh", "Susp", "Adh", ""],
                        "SEQUENCING": [1, 1, 1, 1]})
    path = tmp_path / "cosmic_info.csv.gz"
    with gzip.open(path, "wt") as f:
        cos.to_csv(f, index=False)
    t, n = M.cosmic_metadata(["PFSK1", "KMH2", "OTHER"], str(path))
    assert n == {"matched": 1, "unmatched": 2, "ambiguous": 1}
    assert t.to_dict("records") == [{"cell": "PFSK1", "gdsc_tissue": "nervous", "growth_properties": "Adh",
                                     "cosmic_id": "1"}]
    t, n = M.cosmic_metadata(["GDSC1.A253", "GDSC2.A253", "GDSC2.ZZ"], str(path), prefixes=("GDSC1", "GDSC2"))
    assert list(t["study"]) == ["GDSC1", "GDSC2", "GDSC2"] and list(t["gdsc_tissue"]) == ["aero", "aero", ""]
    assert M.study_column(["CCLE.a", "gCSI.b"], ["CCLE", "gCSI"])["study"].tolist() == ["CCLE", "gCSI"]
    assert M.study_column(["a"], ["CCLE"]) is None


def test_installed_cosmic_info_annotates_real_gdsc_names():
    path = M.cosmic_path()
    if path is None:
        pytest.skip("gdsctools is not installed")
    t, n = M.cosmic_metadata(["PFSK1", "22RV1", "A253"], path)
    assert n["matched"] == 3 and set(t["growth_properties"]) <= {"Adherent", "Suspension", "Semi-Adherent"}


def test_config_key_gives_a_run_its_metadata_and_results_carry_it(tmp_path):
    from hbl_mpi.store.results import read_results

    ds = synthesize("small", seed=3, cells=16, drugs=6)
    write_uno(ds, str(tmp_path / "d.h5"))
    _csv(tmp_path / "m.csv", ds.cell_ids[:12], lab=["a", "b", "c"] * 4)
    cfg = tmp_path / "run.toml"
    cfg.write_text('data = "d.h5"\ncell_metadata = "m.csv"\nn = 2\ns = 1\nstrategy = "flat:1"\nmodel = "tiny"\n'
                   "threads = 1\nflush_seconds = 0.0\n")
    assert main(["run", str(cfg), "--serial", "--out", str(tmp_path / "out")]) == 0
    r = read_results(str(tmp_path / "out" / "results.h5"))
    assert list(r.cell_metadata.columns) == ["cell", "lab"] and len(r.cell_metadata) == 12
    bad = tmp_path / "bad.toml"
    _csv(tmp_path / "b.csv", ["NOPE"], lab=["a"])
    bad.write_text(cfg.read_text().replace("m.csv", "b.csv"))
    assert main(["run", str(bad), "--serial", "--out", str(tmp_path / "out2")]) == 2
    assert not os.path.exists(tmp_path / "out2" / "results.h5")


def test_data_improve_gives_a_multi_study_file_its_study_column(tmp_path):
    from test_improve import make_layout

    root = tmp_path / "csa"
    make_layout(root)
    out = tmp_path / "i.h5"
    assert main(["data", "improve", str(root), "--source", "ccle,GDSCV2", "--out", str(out)]) == 0
    ds = read_uno(str(out))
    meta = ds.cell_metadata.set_index("cell")["study"]
    assert len(meta) == ds.n_cells and all(c.startswith(s + ".") for c, s in meta.items())
    assert set(meta) == {"CCLE", "GDSCv2"}
    one = tmp_path / "one.h5"
    assert main(["data", "improve", str(root), "--source", "CCLE", "--out", str(one)]) == 0
    assert read_uno(str(one)).cell_metadata is None  # one study: no column to add


def test_data_gdsc_fills_metadata_from_cosmic_info_when_installed():
    from types import SimpleNamespace

    from hbl_mpi.commands.data import _cosmic

    if M.cosmic_path() is None:
        pytest.skip("gdsctools is not installed")
    plain = _cosmic(SimpleNamespace(cell_ids=np.array(["PFSK1", "A253"], dtype=object), meta={}))
    assert plain is not None and list(plain[0]["cell"]) == ["PFSK1", "A253"] and "study" not in plain[0]
    multi = _cosmic(SimpleNamespace(cell_ids=np.array(["GDSC1.A253", "CCLE.A253"], dtype=object),
                                    meta={"cell_ids": "source-prefixed", "labels": {"GDSC1": "AUC", "CCLE": "AUC"}}))
    assert list(multi[0]["study"]) == ["GDSC1", "CCLE"] and (multi[0]["gdsc_tissue"] != "").all()
