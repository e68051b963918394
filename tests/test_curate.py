"""``curate``: the Uno file without the most harmful cells (or with only the most beneficial)."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import run_main


@pytest.fixture(scope="module")
def run_dir(reference_3x2, tmp_path_factory):
    """This module's folder: other.h5 (other data), r/results.h5 and tiny.h5 (the shared
    3 x 2 reference run and its data, copied: curate reads them, tests write beside them)."""
    import shutil

    from hbl_mpi.data import synthesize, write_uno

    root = tmp_path_factory.mktemp("curate")
    (root / "r").mkdir()
    shutil.copy(reference_3x2.out / "results.h5", root / "r" / "results.h5")
    shutil.copy(reference_3x2.root / "tiny.h5", root / "tiny.h5")
    write_uno(synthesize("small", seed=9, cells=36, drugs=10), str(root / "other.h5"))
    return root


def curate(root, *args):
    return run_main(["curate", root / "r" / "results.h5", "--data", root / "tiny.h5", *args])


@pytest.mark.timeout(600)
@pytest.mark.parametrize("by", ["impact", "resist", "combined"])
def test_drop_writes_the_data_without_the_top_cells_and_a_csv(run_dir, by):
    from hbl_mpi.data import read_uno

    out = run_dir / f"cur_{by}.h5"
    proc = curate(run_dir, "--drop", "4", "--by", by, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    dropped = pd.read_csv(run_dir / f"cur_{by}.dropped.csv")
    assert list(dropped.columns) == ["cell", "score", "impact", "reason"] and len(dropped) == 4
    ds, full = read_uno(str(out)), read_uno(str(run_dir / "tiny.h5"))
    assert set(ds.cell_ids) == set(full.cell_ids) - set(dropped["cell"])
    kept_rows = pd.Series(full.cell_ids[full.cell_index]).isin(set(ds.cell_ids)).sum()
    assert ds.n_rows == kept_rows
    ranking_key = {"impact": "impact", "resist": "score"}.get(by)
    if ranking_key:  # the dropped cells are the top of that axis
        assert dropped[ranking_key].is_monotonic_decreasing


@pytest.mark.timeout(600)
def test_keep_writes_only_the_most_beneficial(run_dir):
    from hbl_mpi.data import read_uno

    out = run_dir / "small.h5"
    proc = curate(run_dir, "--keep", "10", "--by", "impact", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    kept = pd.read_csv(run_dir / "small.kept.csv")
    assert len(kept) == 10 and kept["impact"].is_monotonic_increasing
    assert set(read_uno(str(out)).cell_ids) == set(kept["cell"])


@pytest.mark.timeout(600)
@pytest.mark.parametrize("args, message", [
    (["--drop", "0"], "must be >= 1"),
    (["--keep", "36"], "must be <"),
    (["--drop", "99"], "must be <"),
])
def test_bad_k_exits_2_with_one_line(run_dir, args, message):
    out = run_dir / "bad.h5"
    proc = curate(run_dir, *args, "--out", str(out))
    assert proc.returncode == 2 and message in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("hbl_mpi: error:")
    assert not out.exists()


@pytest.mark.timeout(600)
def test_results_from_other_data_are_refused(run_dir):
    out = run_dir / "bad.h5"
    proc = run_main(["curate", run_dir / "r" / "results.h5", "--data", run_dir / "other.h5", "--drop", "2",
                     "--out", out])
    assert proc.returncode == 2 and "checksums differ" in proc.stderr and not out.exists()


def test_reason_names_the_diagnosis_and_a_swaps_look_alike():
    """Pure: the reason carries the diagnosis when the ranking has one; a swap names its look-alike."""
    from hbl_mpi.analysis.curation import curate_selection

    ranking = pd.DataFrame({"cell": ["A", "B", "C", "D"], "score": [4.0, 3.0, 2.0, 1.0],
                            "impact": [0.1, 0.2, 0.0, -0.1],
                            "diagnosis": ["swap", "label_noise", "none", ""],
                            "likely_identity": ["D", "", "", ""]})
    sel = curate_selection(ranking, "resist", 3, "drop")
    assert list(sel["cell"]) == ["A", "B", "C"]
    assert sel["reason"][0].startswith("#1 most harmful of 4 by resist (score 4)")
    assert "D's profile, check the pair's identity" in sel["reason"][0]
    assert sel["reason"][1].endswith("; diagnosis label_noise")
    assert "diagnosis" not in sel["reason"][2]
    plain = curate_selection(ranking.drop(columns=["diagnosis", "likely_identity"]), "resist", 1, "drop")
    assert plain["reason"][0] == "#1 most harmful of 4 by resist (score 4)"
