"""``curate``: the Uno file without the most harmful cells (or with only the most beneficial)."""

from __future__ import annotations

import pandas as pd
import pytest

from mpiutil import run_py
from tinyrun import write_3x2_run  # the same tiny tree as test_run_mpi (3 x 2 stages, tiny model)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from hbl_mpi.data import synthesize, write_uno

    root = tmp_path_factory.mktemp("curate")
    write_3x2_run(root)  # root/tiny.h5 and root/run.toml
    write_uno(synthesize("small", seed=9, cells=36, drugs=10), str(root / "other.h5"))
    proc = run_py(["-m", "hbl_mpi", "run", str(root / "run.toml"), "--serial", "--out", str(root / "r")],
                  timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def curate(root, *args):
    return run_py(["-m", "hbl_mpi", "curate", str(root / "r" / "results.h5"), "--data", str(root / "tiny.h5"),
                   *args], timeout=120)


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
    proc = run_py(["-m", "hbl_mpi", "curate", str(run_dir / "r" / "results.h5"), "--data",
                   str(run_dir / "other.h5"), "--drop", "2", "--out", str(out)], timeout=120)
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
