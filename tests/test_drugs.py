"""partition = "drugs" (issue 30 part 5): the plan cuts drugs, errors are per drug, the
ranking, report and curate work on drugs, synthetic data plants drug anomalies, and the
MPI runtime reproduces the serial driver bit for bit.

Every case has its answer by construction: a planted drug's rows are the only ones that
change, a hand-made per-drug error table with one bad drug ranks it first, a curated file
lacks exactly the dropped drugs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hbl_mpi.analysis.ranking import rank_cells
from hbl_mpi.analysis.units import to_unit, unit_view
from hbl_mpi.core.errors import InputError
from hbl_mpi.data import read_uno, synthesize, write_uno
from hbl_mpi.data.dataset import combine_truth, split_truth
from hbl_mpi.store.results import RunTables
from hbl_mpi.tree.invariants import check_invariants
from hbl_mpi.tree.plan import ROOT, PlanSpec, plan_for
from mpiutil import run_mpi
from tinyrun import write_tiny_run

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------------------- the plan
def test_drugs_plan_cuts_drugs_keeps_all_cells_and_the_same_holdout():
    ds = synthesize("small", seed=2, cells=40, drugs=30)
    plan = plan_for(ds, PlanSpec(n=3, s=2, seed=4, partition="drugs"))
    cells = plan_for(ds, PlanSpec(n=3, s=2, seed=4))
    check_invariants(plan)
    assert plan.unit == "drug" and cells.unit == "cell"
    np.testing.assert_array_equal(plan.holdout, cells.holdout)  # the common test rows do not move
    assert len(plan) == 3 + 9
    drug_of = np.asarray(ds.drug_index, dtype=np.int64)
    for name in plan.trained_nodes():
        rows = plan.rows(name)
        val_drugs = set(plan.val_units(name).tolist())
        assert rows.unit == "drug" and set(rows.val_units.tolist()) == val_drugs
        assert set(drug_of[rows.val].tolist()) == val_drugs  # val = every row of its drugs...
        assert not (set(drug_of[rows.train].tolist()) & val_drugs)  # ...and train none of them
        assert len(rows.val) + len(rows.train) + len(rows.test) == ds.n_rows
        assert len(rows.train_cells) == ds.n_cells  # every node trains on every cell
    for p in [ROOT, "1.1"]:
        parts = [set(plan.val_units(c).tolist()) for c in plan.nodes[p].children]
        assert set().union(*parts) == set(plan.val_units(p).tolist())
    roles = plan.to_frame()["role"].unique().tolist()
    assert sorted(roles) == ["train_added_drug", "val_drug"]
    summary = plan.stage_summary()  # what `plan` prints: 30 drugs cut in 3, then in 3 again
    assert [st["mean_val_drugs"] for st in summary] == pytest.approx([10.0, 30 / 9]) and summary[0]["mean_val_cells"] == 40


# ---------------------------------------------------------------------------- synthetic drugs
def test_default_synthetic_data_is_unchanged_and_drug_anomalies_touch_only_their_drugs():
    base = synthesize("small", seed=7)
    again = synthesize("small", seed=7, drug_anomaly_fraction=0.0)
    assert base.checksum() == again.checksum() and base.drug_truth is None
    assert "drug_anomaly_fraction" not in base.meta["spec"]  # the file's metadata stays as it was
    planted = synthesize("small", seed=7, drug_anomaly_fraction=0.1,
                         drug_anomaly_kinds=("wrong_assay", "drug_noise", "drug_shift"))
    dt = planted.drug_truth
    assert len(dt) == round(0.1 * 96) and set(dt["kind"]) == {"wrong_assay", "drug_noise", "drug_shift"}
    pd.testing.assert_frame_equal(planted.truth, base.truth)  # the planted cells are the same
    bad = np.isin(planted.drug_ids[planted.drug_index], dt["drug"].to_numpy())
    np.testing.assert_array_equal(planted.label[~bad], base.label[~bad])
    for d, kind in zip(dt["drug"], dt["kind"]):
        rows = planted.drug_ids[planted.drug_index] == d
        new, old = planted.label[rows].astype(float), base.label[rows].astype(float)
        if kind == "drug_shift":
            assert abs(np.mean(new - old)) > 0.1
        else:  # another assay or other drugs' labels: unrelated to the drug's own responses
            assert abs(np.corrcoef(new, old)[0, 1]) < 0.5


def test_truth_with_drugs_round_trips_marked_by_unit(tmp_path):
    ds = synthesize("small", seed=5, cells=30, drugs=20, drug_anomaly_fraction=0.1)
    t = combine_truth(ds.truth, ds.drug_truth)
    assert set(t["unit"]) == {"cell", "drug"}
    assert (t.loc[t["unit"] == "drug", "cell"] == "").all()
    write_uno(ds, str(tmp_path / "d.h5"))
    back = read_uno(str(tmp_path / "d.h5"))
    pd.testing.assert_frame_equal(back.truth, ds.truth)
    pd.testing.assert_frame_equal(back.drug_truth, ds.drug_truth)
    assert split_truth(ds.truth) == (ds.truth, None)  # a cells-only table is the old one
    sub = back.subset_drugs([d for d in back.drug_ids if d != ds.drug_truth["drug"][0]])
    assert sub.n_drugs == 19 and ds.drug_truth["drug"][0] not in set(sub.drug_truth["drug"])
    assert sub.n_rows == int((back.drug_ids[back.drug_index] != ds.drug_truth["drug"][0]).sum())


@pytest.mark.parametrize("bad, message", [
    (dict(unit=["cell", "plate"], drug=["", "x"]), "units cell or drug"),
    (dict(unit=["cell", "drug"], drug=["", "SYN.D9999"]), r"names 1 drug\(s\) not in the data"),
    (dict(unit=["cell", "drug"]), "needs a drug column"),
])
def test_a_bad_unit_marked_truth_is_one_input_error(tmp_path, bad, message):
    ds = synthesize("small", seed=5, cells=30, drugs=20, anomaly_fraction=0.05)
    path = str(tmp_path / "d.h5")
    write_uno(ds, path)
    t = pd.DataFrame({"cell": [ds.truth["cell"][0], ""], "kind": ["shift", "wrong_assay"], **bad})
    with pd.HDFStore(path, mode="a") as store:
        store.put("truth", t.astype(object), format="table", track_times=False)
    with pytest.raises(InputError, match=message):
        read_uno(path)


def test_synth_cli_rejects_unknown_drug_kinds(tmp_path, capsys):
    from hbl_mpi.__main__ import main

    code = main(["data", "synth", "--drug-anomaly-kinds", "wrong_assay,bogus", "--out", str(tmp_path / "x.h5")])
    assert code == 2 and "bogus" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


# ---------------------------------------------------------------------------- ranking on drugs
def _hand_made_drug_run(bad: str) -> RunTables:
    """Per-drug errors of a 2-stage tree: every drug 0.01 at each stage, ``bad`` 0.2."""
    drugs = [f"D{i}" for i in range(12)]
    rows = []
    for stage, nodes in ((1, ["1.1", "1.2", "1.3"]), (2, [f"1.{a}.{b}" for a in (1, 2, 3) for b in (1, 2)])):
        for i, d in enumerate(drugs):
            node = nodes[i % len(nodes)]
            rows.append({"node": node, "drug": d, "n_rows": 20, "mse": 0.2 if d == bad else 0.01 + 0.001 * i})
    dv = pd.DataFrame(rows)
    nodes = pd.DataFrame({"node": sorted(set(dv["node"])), "status": "done", "val_loss": 0.02})
    nodes["stage"] = nodes["node"].str.count(r"\.")
    nodes["parent"] = nodes["node"].str.rpartition(".")[0]
    return RunTables(nodes=nodes, history=pd.DataFrame(), cell_val=dv.iloc[:0].rename(columns={"drug": "cell"}),
                     config={"partition": "drugs"}, drug_val=dv,
                     drug_truth=pd.DataFrame({"drug": [bad], "kind": ["wrong_assay"]}))


def test_the_drug_ranking_puts_the_bad_drug_first_and_names_drugs():
    run = _hand_made_drug_run("D7")
    view = unit_view(run)
    assert list(view.truth.columns) == ["cell", "kind"] and view.truth["cell"].tolist() == ["D7"]
    ranking = to_unit(rank_cells(view.cell_val, view.nodes), "drug")
    assert ranking["drug"].iloc[0] == "D7" and len(ranking) == 12 and "cell" not in ranking.columns
    cells_run = RunTables(nodes=run.nodes, history=run.history, cell_val=run.cell_val, config={})
    assert unit_view(cells_run) is cells_run and cells_run.unit == "cell"


# ---------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def drug_run(tmp_path_factory):
    """A tiny drugs run (N = 3, S = 2, 12 nodes) over 36 cells and 24 drugs, 3 of them
    planted, trained serially in process, and its report."""
    from hbl_mpi.__main__ import main

    root = tmp_path_factory.mktemp("drugs")
    cfg = write_tiny_run(root, tree={"n": 3, "s": 2, "strategy": "exp2:3"},
                         synth={"cells": 36, "drugs": 24, "drug_anomaly_fraction": 0.125},
                         extra={"partition": "drugs"})
    assert main(["run", str(cfg), "--serial", "--out", str(root / "serial")]) == 0
    assert main(["report", str(root / "serial" / "results.h5"), "--out", str(root / "report")]) == 0
    return root, cfg


def test_a_drugs_run_writes_per_drug_tables_and_a_drug_report(drug_run):
    from hbl_mpi.store.results import read_results

    root, _ = drug_run
    run = read_results(str(root / "serial" / "results.h5"))
    assert run.unit == "drug" and len(run.cell_val) == 0 and run.cell_pred is None
    assert len(run.drug_truth) == 3 and run.truth is not None  # both units' truths, split
    stage1 = run.drug_val[run.drug_val["node"].str.count(r"\.") == 1]
    # stage 1 validates every drug once (the plan table holds drug ids in `cell`, role val_drug)
    plan1 = run.plan[(run.plan["role"] == "val_drug") & (run.plan["stage"] == 1)]
    assert sorted(stage1["drug"]) == sorted(plan1["cell"]) == sorted(run.drug_val["drug"].unique())
    assert (stage1["n_rows"] > 0).all() and len(run.drug_test) > 0
    # the holdout errors per drug: each node has one row per drug with holdout rows
    assert (run.drug_test.groupby("node").size() == run.drug_test["drug"].nunique()).all()
    out = root / "report"
    ranking = pd.read_csv(out / "drug_ranking.csv")
    assert len(ranking) == 24 and ranking["rank"].tolist() == list(range(1, 25))
    assert not (out / "cell_ranking.csv").exists()
    text = (out / "report.md").read_text()
    assert "Drug ranking" in text and "Not available for a drugs-partition run" in text
    det = pd.read_csv(out / "detection.csv")
    assert det.loc[det["kind"] == "all", "positives"].item() == 3


def test_drug_ranking_has_cell_rankings_columns_with_drug_for_cell(drug_run, reference_3x2, tmp_path):
    from conftest import run_main
    from hbl_mpi.report.cells import DIAG_COLUMNS, REF_COLUMNS

    root, _ = drug_run
    cells_results = reference_3x2.out / "results.h5"
    assert run_main(["report", cells_results, "--cells", "0", "--out", tmp_path / "c"]).returncode == 0
    cell_cols = pd.read_csv(tmp_path / "c" / "cell_ranking.csv", nrows=1).columns
    drug_cols = pd.read_csv(root / "report" / "drug_ranking.csv", nrows=1).columns
    diagnosis = set(DIAG_COLUMNS + REF_COLUMNS)  # per cell only: a drugs run has no diagnosis
    assert list(drug_cols) == [c.replace("cell", "drug") for c in cell_cols if c not in diagnosis]
    drugs_results = root / "serial" / "results.h5"
    for args in ([cells_results, drugs_results], [drugs_results, "--baselines"]):  # mixed units; cell baselines
        res = run_main(["report", *args, "--out", tmp_path / "x"])
        assert res.returncode == 2 and "drug" in res.stderr, res.stderr
    assert not (tmp_path / "x").exists()


def test_curate_drop_on_a_drugs_run_drops_drugs(drug_run, tmp_path):
    from hbl_mpi.__main__ import main

    root, _ = drug_run
    data = root / "tiny.h5"
    out = tmp_path / "cur.h5"
    assert main(["curate", str(root / "serial" / "results.h5"), "--data", str(data), "--drop", "3",
                 "--out", str(out)]) == 0
    dropped = pd.read_csv(tmp_path / "cur.dropped.csv")
    assert list(dropped.columns) == ["drug", "score", "impact", "reason"] and len(dropped) == 3
    before, after = read_uno(str(data)), read_uno(str(out))
    assert after.n_cells == before.n_cells and after.n_drugs == before.n_drugs - 3
    assert set(before.drug_ids) - set(after.drug_ids) == set(dropped["drug"])


def test_a_finished_drugs_run_restarts_with_its_drug_tables(drug_run, tmp_path):
    """--restart carries the per-drug tables of finished nodes over (nothing is retrained)."""
    import shutil

    from hbl_mpi.__main__ import main

    root, cfg = drug_run
    shutil.copytree(root / "serial", tmp_path / "again", ignore=shutil.ignore_patterns(".lock"))
    assert main(["run", str(cfg), "--serial", "--restart", "--out", str(tmp_path / "again")]) == 0
    for key in ("nodes", "drug_val", "drug_test", "truth"):
        a, b = (pd.read_hdf(d / "results.h5", key) for d in (root / "serial", tmp_path / "again"))
        pd.testing.assert_frame_equal(b.reset_index(drop=True), a.reset_index(drop=True), obj=key)


@pytest.mark.timeout(400)
def test_drugs_partition_under_mpi_matches_serial_bit_for_bit(drug_run):
    root, cfg = drug_run
    # 1.1's group held on a slow 1.1.1 (a sleep: the numbers don't change), so the other
    # group must take 1.1's other children by MPI transfer
    slow = ["--set", "fault_slow_nodes=['1.1.1']", "--set", "fault_slow_seconds=4.0"]
    proc = run_mpi(3, ["-m", "hbl_mpi", "run", str(cfg), "--out", str(root / "mpi"), *slow], timeout=360)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (pd.read_hdf(root / "mpi" / "results.h5", "nodes")["source"] == "group").any(), "no fork between groups"
    a, b = (pd.read_hdf(root / d / "results.h5", "nodes").set_index("node").sort_index() for d in ("serial", "mpi"))
    assert list(a.index) == list(b.index) and len(a) == 12
    for col in ("val_loss", "val_loss_last", "test_loss", "train_loss"):
        np.testing.assert_array_equal(b[col].to_numpy(), a[col].to_numpy(), err_msg=col)
    for key in ("drug_val", "drug_test"):
        ta, tb = (pd.read_hdf(root / d / "results.h5", key).sort_values(["node", "drug"]).reset_index(drop=True)
                  for d in ("serial", "mpi"))
        pd.testing.assert_frame_equal(tb, ta, check_exact=True, obj=key)


def test_adaptive_expansion_with_drugs_is_refused():
    from hbl_mpi.core.config import RunConfig, validate

    with pytest.raises(InputError, match="expand"):
        validate(RunConfig(data="x.h5", partition="drugs", expand="adaptive"))
