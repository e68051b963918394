"""Smoke tests of the benchmarks: each runs at a tiny size, prints a table and, last, one
JSON object whose figures are consistent with what the script measured.

Timings are not asserted (a shared 2-core host makes them noise at these sizes); what is
asserted is what must hold at any size: correct transfers, exact data-byte arithmetic,
every node of the tree scheduled, the simulated tree finished.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

from mpiutil import ROOT, run_mpi, run_py


def last_json(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) >= 3, proc.stdout  # a human table before the JSON
    return json.loads(lines[-1])


@pytest.mark.slow  # a benchmark smoke run
@pytest.mark.timeout(60)
def test_train_bench_tiny():
    rows, batch = 1024, 64
    res = last_json(run_py([str(ROOT / "bench/train.py"), "--rows", str(rows), "--steps", "3", "--epochs", "1",
                            "--batch", str(batch), "--preset", "tiny"], timeout=55))
    for key in ("speedup_vs_dataloader", "memory_ratio", "memory_ratio_full_top21_computed",
                "data_path_speedup_vs_dataloader"):
        assert res[key] > 0, key
    v = res["variants"]
    assert set(v) == {"trainer", "dataloader", "batched"}
    # the duplicated layout's bytes are exact: one float32 row of every feature + the label per row
    assert v["dataloader"]["data_tensor_bytes"] == rows * (942 + 5270 + 1) * 4
    cells, drugs = res["cells"], res["drugs"]
    assert v["trainer"]["data_tensor_bytes"] == cells * 942 * 4 + drugs * 5270 * 4 + rows * 36
    assert res["memory_ratio_tables_only"] == pytest.approx(
        v["dataloader"]["data_tensor_bytes"] / v["trainer"]["data_tensor_bytes"])
    full = res["full_top21_computed"]
    assert full["duplicated_bytes"] == 529_940 * 6213 * 4
    assert res["memory_ratio_full_top21_computed"] > 50
    for name in v:
        assert v[name]["train_rows"] == 3 * batch and v[name]["samples_per_s"] > 0


@pytest.mark.slow  # a benchmark smoke run
@pytest.mark.timeout(60)
def test_fork_bench_tiny():
    res = last_json(run_mpi(3, [str(ROOT / "bench/fork.py"), "--params", "200000", "--reps", "2"], timeout=55))
    assert res["checksums_consistent"] is True
    assert res["state_bytes"] == 3 * 200_000 * 4
    for key in ("speedup_vs_file", "speedup_vs_pickle", "fraction_of_raw_send", "hugepage_gain"):
        assert res[key] > 0, key


@pytest.mark.timeout(60)
def test_fork_bench_needs_three_ranks():
    proc = run_mpi(2, [str(ROOT / "bench/fork.py"), "--params", "1000", "--reps", "1"], timeout=55)
    assert proc.returncode != 0 and "3 ranks" in proc.stderr


@pytest.mark.slow  # a benchmark smoke run
@pytest.mark.timeout(90)
def test_schedule_bench_tiny():
    res = last_json(run_mpi(3, [str(ROOT / "bench/schedule.py"), "--n", "2", "--s", "3", "--scale", "0.01"],
                            timeout=85))
    assert res["nodes"] == 2 + 4 + 8
    assert res["tasks_per_s"] > 0 and res["futures_tasks_per_s"] > 0
    # the makespan can never beat the DAG's lower bound
    assert res["makespan_over_bound"] >= 1.0
    assert 0 < res["busy_fraction"] <= 1.0


@pytest.mark.slow  # a benchmark smoke run
@pytest.mark.timeout(60)
def test_simulate_small_machines(tmp_path):
    png = tmp_path / "load.png"
    res = last_json(run_py([str(ROOT / "bench/simulate.py"), "--nodes", "1,2", "--s", "3", "--plot", str(png)],
                           timeout=55))
    runs = res["runs"]
    assert [r["summit_nodes"] for r in runs] == [1, 2]
    for r in runs:
        assert r["tree_nodes"] == 4 + 16 + 64
        assert r["groups"] == r["gpus"] - 1  # rank 0 takes one GPU slot
        assert 0 < r["gpu_utilization"] <= 1 and r["peak_busy_groups"] <= r["groups"]
        assert all(0 <= u <= 1 + 1e-9 for u in r["utilization_over_time"])
    # more GPUs never lengthen the makespan of the same tree by more than noise
    assert runs[1]["makespan_h"] <= runs[0]["makespan_h"] * 1.05
    assert png.stat().st_size > 0


def test_state_buffers_are_huge_page_backed_when_linux_allows():
    """state.flat_buffer asks for transparent huge pages (forks pin fewer pages): check the
    kernel actually gave them, when THP is in madvise/always mode."""
    from hbl_mpi.train.flat_state import clone_flat, flat_buffer

    try:
        mode = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        pytest.skip("no transparent huge pages on this system")
    if "[never]" in mode or not sys.platform.startswith("linux"):
        pytest.skip("transparent huge pages disabled")
    t = flat_buffer(8 << 20).zero_()  # 32 MB
    c = clone_flat(t)
    assert torch.equal(c, t) and c.data_ptr() != t.data_ptr()
    start, end = t.data_ptr(), t.data_ptr() + t.numel() * 4
    huge_kb = 0
    with open("/proc/self/smaps") as f:
        inside = False
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo < end and hi > start
            elif inside and head == "AnonHugePages:":
                huge_kb += int(line.split()[1])
    assert huge_kb >= 16 * 1024, f"only {huge_kb} kB of huge pages in a 32 MB state buffer"


@pytest.fixture(scope="module")
def tiny_h5(tmp_path_factory):
    from hbl_mpi.data import synthesize, write_uno

    path = tmp_path_factory.mktemp("bench_data") / "tiny.h5"
    write_uno(synthesize("small", seed=2, cells=24, drugs=8), str(path))
    return path


@pytest.mark.slow  # a benchmark smoke run
@pytest.mark.timeout(300)
def test_group_bench_tiny():
    res = last_json(run_py([str(ROOT / "bench/group.py"), "--presets", "tiny", "--reps", "1", "--steps", "3",
                            "--epochs", "1", "--rows", "600", "--batch", "32"], timeout=290))
    r = res["presets"]["tiny"]
    assert res["ratio_vs_ddp"] == pytest.approx(r["ratio_vs_ddp"])
    assert r["ratio_vs_ddp"] == pytest.approx(r["samples_per_s"]["ours"] / r["samples_per_s"]["ddp"])
    ours = res["runs"]["tiny"]["ours"][0]
    assert ours["ranks"] == 2 and ours["buckets"] >= 1 and ours["steps"] == 2 * 3
    # the group's update is the single process's, up to float reassociation
    single = res["runs"]["tiny"]["single"][0]
    assert ours["final_loss"] == pytest.approx(single["final_loss"], rel=1e-4)


@pytest.mark.slow  # a benchmark smoke run
@pytest.mark.timeout(300)
def test_file_workflow_bench_tiny(tiny_h5, tmp_path):
    sets = [f"data='{tiny_h5}'", "n=2", "s=2", "strategy='flat:1'", "model='tiny'", "batch_size=64"]
    res = last_json(run_py([str(ROOT / "bench/file_workflow.py"), "--ranks", "3", "--work", str(tmp_path / "w"),
                            *sum((["--set", s] for s in sets), [])], timeout=290))
    assert res["nodes"] == 2 + 4 and len(res["per_node"]) == 6
    assert res["speedup"] == pytest.approx(res["file_makespan_s"] / res["ours_makespan_s"])
    # same trainer, plan and seeds: the one-process-per-node workflow computes the same tree
    assert res["val_loss_bit_identical"] is True
    for phases in res["per_node"].values():
        assert set(phases) == {"process_start", "data_read", "state_load", "training", "state_save", "exit"}
        assert all(v >= 0 for v in phases.values())
    assert res["ours_per_node"]["sources"].get("fresh") == 2


@pytest.mark.slow  # a benchmark smoke run
@pytest.mark.timeout(400)
def test_startup_bench_tiny(tiny_h5, tmp_path):
    res = last_json(run_py([str(ROOT / "bench/startup.py"), "--data", str(tiny_h5), "--ranks", "3", "--preset", "tiny",
                            "--steps", "2", "--work", str(tmp_path / "w"), "--timeout", "300"], timeout=390))
    for form in ("h5", "npz"):
        r = res[form]
        assert len(r["worker_peak_rss_bytes"]) == 2 and r["rank0_peak_rss_bytes"] > 0
        assert r["launch_to_first_step_s"] >= r["phases_s"]["rank0_read_and_plan"] > 0
        assert r["worker_tables_share_dataset"] == [True, True]
        assert r["worker_dataset_bytes"][0] == r["normalised_bytes"]
    assert res["npz"]["file_bytes"] < res["h5"]["file_bytes"]
    assert res["one_table_copy_per_worker"] is True


@pytest.mark.slow  # a benchmark smoke run
@pytest.mark.timeout(900)
def test_impact_study_tiny(tmp_path):
    """The point-removal / LDS study end to end at a toy size (no TracIn: dattri is optional)."""
    res = last_json(run_py([str(ROOT / "bench/impact_study.py"), "--work", str(tmp_path), "--seed", "5",
                            "--cells", "32", "--drugs", "8", "--s", "2", "--tree-epochs", "2", "--retrain-epochs",
                            "2", "--seeds", "1", "2", "--ks", "0.1", "--halves", "4", "--no-tracin"], timeout=880))
    assert res["planted"] >= 1 and res["planted"] in res["ks"]
    for metric in ("kept_clean", "new_lines"):
        fr = res["oracle_fraction_at_planted"][metric]
        assert fr["oracle"]["fraction"] == pytest.approx(1.0)
        assert {"HBL resist", "HBL impact", "HBL combined", "OOF residual", "random"} <= set(fr)
    assert res["lds_halves"] == 4 and "HBL impact" in res["lds"]
    assert res["retrain_row_epochs"] > 0


@pytest.mark.slow  # a benchmark smoke run
@pytest.mark.timeout(300)
def test_sibling_noise_tiny(tmp_path):
    """Noise floors per variant; the chaos check's control (no row removed) moves nothing."""
    common = ["--seed", "3", "--cells", "32", "--drugs", "8", "--set", "model=tiny", "--set", "s=2", "--set",
              "epochs=2", "--set", "batch_size=64"]
    res = last_json(run_py([str(ROOT / "bench/sibling_noise.py"), "--work", str(tmp_path), *common,
                            "--variant", "crn:batch_order=family,patience=99,inherit=last"], timeout=280))
    assert set(res["variants"]) == {"crn"}
    for v in res["variants"].values():
        assert set(v["stages"]) == {"1", "2"} and v["stages"]["2"]["contrasts"] == 16  # N = 4: 16 stage-2 groups
        assert v["stages"]["2"]["noise_floor"] >= 0 and v["epochs"] > 0 and 0 <= v["auroc"]["all"] <= 1
    assert res["variants"]["crn"]["settings"]["batch_order"] == "family"
    ch = last_json(run_py([str(ROOT / "bench/sibling_noise.py"), "--work", str(tmp_path), *common,
                           "--variant", "crn:batch_order=family,patience=99,inherit=last", "--chaos", "0", "2",
                           "--draws", "2"], timeout=280))
    assert ch["removed"]["0"]["mean_abs_change"] == 0.0  # the same rows train the same model, bit for bit
    assert ch["removed"]["2"]["mean_abs_change"] > 0.0 and ch["sibling_swap"]["sibling"] == "1.1.2"


def _impact_study_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("impact_study", ROOT / "bench" / "impact_study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_impact_study_paired_gains_without_truth():
    """Real data has no oracle: gains over k = 0 and against OOF, paired by seed."""
    import pandas as pd

    rows = []
    for seed, base in ((1, 1.0), (2, 2.0)):
        rows.append({"method": "none", "k": 0, "seed": seed, "new_lines": base})
        rows.append({"method": "OOF residual", "k": 5, "seed": seed, "new_lines": base - 0.1})
        rows.append({"method": "HBL resist", "k": 5, "seed": seed, "new_lines": base - 0.3 * seed})
    g = _impact_study_module().paired_gains(pd.DataFrame(rows), "new_lines", ["OOF residual", "HBL resist"], [5])
    assert g["OOF residual"]["5"]["gain_mean"] == pytest.approx(0.1)
    assert g["OOF residual"]["5"]["gain_sd"] == pytest.approx(0.0, abs=1e-12)
    assert "vs_reference_mean" not in g["OOF residual"]["5"]
    assert g["HBL resist"]["5"]["gain_mean"] == pytest.approx(0.45)  # gains 0.3 and 0.6, paired
    assert g["HBL resist"]["5"]["vs_reference_mean"] == pytest.approx(0.35)


def test_impact_study_reads_the_targets_paired_against_every_baseline():
    """The default's gain minus each baseline's, per seed, in units of the oracle's mean gain."""
    import pandas as pd

    rows = []
    for seed, base in ((1, 1.0), (2, 2.0), (3, 3.0)):
        rows.append({"method": "none", "k": 0, "seed": seed, "m": base})
        rows.append({"method": "oracle", "k": 4, "seed": seed, "m": base - 0.2})
        rows.append({"method": "HBL resist", "k": 4, "seed": seed, "m": base - 0.1 - 0.02 * seed})
        rows.append({"method": "OOF residual", "k": 4, "seed": seed, "m": base - 0.1})
    vs = _impact_study_module().default_vs_baselines(pd.DataFrame(rows), "m", "HBL resist",
                                                     ["HBL resist", "OOF residual", "oracle"], 4, 0.2)
    assert set(vs) == {"OOF residual"}  # not the default itself, not the oracle
    assert vs["OOF residual"]["mean"] == pytest.approx(0.2)  # 0.02 * 2 / 0.2: per-seed 0.1, 0.2, 0.3
    assert vs["OOF residual"]["sd"] == pytest.approx(0.1)
    assert vs["OOF residual"]["se"] == pytest.approx(0.1 / 3 ** 0.5)
    assert _impact_study_module().default_vs_baselines(pd.DataFrame(rows), "m", "absent", ["OOF residual"], 4,
                                                       0.2) == {}


@pytest.mark.slow  # a benchmark smoke run
@pytest.mark.timeout(300)
def test_impact_study_on_a_finished_tree_without_truth(tmp_path):
    """The GDSC path (issue 13 part c): an existing tree, data with no planted cells."""
    from hbl_mpi.__main__ import main
    from hbl_mpi.data import synthesize, write_uno

    data = tmp_path / "d.h5"
    write_uno(synthesize("small", seed=3, cells=32, drugs=8, anomaly_fraction=0.0), str(data))
    cfg = tmp_path / "t.toml"
    cfg.write_text(f'data = "{data}"\nn = 2\ns = 2\nstrategy = "flat:1"\nmodel = "tiny"\nseed = 1\nthreads = 1\n'
                   'batch_size = 64\n')
    assert main(["run", str(cfg), "--serial", "--out", str(tmp_path / "tree")]) == 0
    res = last_json(run_py([str(ROOT / "bench/impact_study.py"), "--work", str(tmp_path / "w"), "--seed", "1",
                            "--tree", str(tmp_path / "tree" / "results.h5"), "--retrain-epochs", "2", "--seeds",
                            "1", "2", "--ks", "0.1", "--halves", "0", "--no-tracin"], timeout=280))
    assert res["planted"] == 0 and res["oracle_fraction_at_planted"] == {}
    assert "oracle" not in res["point_removal"]["new_lines"]
    g = res["gains"]["new_lines"]
    assert {"HBL resist", "OOF residual", "random"} <= set(g) and g["random"]["3"]["n_seeds"] == 2
