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


# ----------------------------------------------------------------------------- no arguments
# Issue 27 item 6: every bench script runs with no arguments on a fresh clone. It makes the
# data it needs (bench/benchkit.py) or says in one line what to run first (exit 2, the line
# starting with the script's name); never a traceback. The default tier checks the defaults
# each script's command line gives and the shared helper, in process; the slow tier runs
# each script with no arguments for real (to the end where that takes a minute or less,
# else until it has started its work).

BENCH = ROOT / "bench"
SCRIPTS = ("adaptive_study", "ckpt_overhead", "detection_study", "diagnosis_study", "file_workflow", "fork",
           "gdsc_study", "group", "impact_study", "paper_findings", "schedule", "sibling_noise", "simulate",
           "startup", "train",
           # issue 31: covered in tests/test_gpu_check.py (flops, gpu_fork through gpu_check.sh --dry-run)
           # and tests/test_models_shipped.py (model_agreement)
           "flops", "gpu_fork", "model_agreement",
           # issue 30: real_data_study needs a report (one line, tested below), group_impact_study makes its data
           "real_data_study", "group_impact_study")


def _bench_module(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _benchkit():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import benchkit

    return benchkit


def test_every_bench_script_is_covered_here():
    assert sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "benchkit") == sorted(SCRIPTS)


@pytest.fixture
def temp_dir(tmp_path, monkeypatch):
    """The system temp dir, moved: default work folders land here."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


# what each script's command line gives with no arguments (the documented defaults)
NO_ARG_DEFAULTS = {
    "ckpt_overhead": lambda t: {"data": str(ROOT / "demo" / "small.h5"), "root": str(t / "hbl_ckpt_overhead"),
                                "preset": "small", "reps": 3, "seed": 1},
    "detection_study": lambda t: {"work": str(t / "hbl_detection_study"), "seed": 0, "name": None, "ranks": 3,
                                  "summary": False},
    "diagnosis_study": lambda t: {"work": str(t / "hbl_diagnosis_study"), "seeds": [9301, 9302, 9303], "ranks": 3},
    "file_workflow": lambda t: {"work": str(t / "hbl_file_workflow"), "config": str(ROOT / "jobs" / "demo.toml"),
                                "ranks": 4, "set": [], "node": None},
    "fork": lambda t: {"params": 0, "widths": "942,5270", "reps": 5, "full": False},
    "group": lambda t: {"presets": "small,paper", "reps": 2, "rows": 20_000, "batch": 256, "role": None},
    "impact_study": lambda t: {"work": str(t / "hbl_impact_study"), "seed": 9401, "cells": 160, "drugs": 48,
                               "tree": None, "tables": False, "plot": None},
    "schedule": lambda t: {"n": 4, "s": 5, "scale": 0.1, "full": False},
    "sibling_noise": lambda t: {"work": str(t / "hbl_sibling_noise"), "seed": 401, "chaos": None,
                                "variant": ["base:", "crn:batch_order=family", "fixed:patience=99,inherit=last",
                                            "crnfixed:batch_order=family,patience=99,inherit=last"]},
    "simulate": lambda t: {"nodes": "128,256,512,1024,2048,4608", "s": 5, "strategy": "EXP2", "record": None,
                           "plot": None},
    "startup": lambda t: {"data": str(t / "hbl_startup" / "top21.h5"), "work": str(t / "hbl_startup" / "work"),
                          "ranks": 4, "preset": "paper", "child": None},
    "train": lambda t: {"rows": 20_000, "preset": "small", "batch": 256, "full": False, "variant": None},
}


@pytest.mark.parametrize("name", sorted(NO_ARG_DEFAULTS))
def test_bench_no_arguments_give_the_documented_defaults(name, temp_dir):
    """Nothing required: no arguments parse to the defaults (work folders under the temp dir,
    named after the script; the seeds and variants the docs measured with)."""
    mod = _bench_module(name)
    args = mod.parse_args([]) if hasattr(mod, "parse_args") else mod.parser().parse_args([])
    got = vars(args)
    for key, want in NO_ARG_DEFAULTS[name](temp_dir).items():
        assert got[key] == want, (name, key)


def test_sibling_noise_given_variants_replace_the_defaults():
    """--variant is an append action: the defaults are filled in after parsing, never extended."""
    args = _bench_module("sibling_noise").parse_args(["--variant", "crn:batch_order=family"])
    assert args.variant == ["crn:batch_order=family"]


def _one_line_exit(capsys, call) -> str:
    with pytest.raises(SystemExit) as e:
        call()
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("name, call", [
    ("adaptive_study", lambda m: m.main([])),
    ("gdsc_study", lambda m: m.main([])),
    ("paper_findings", lambda m: m.check([])),
    ("real_data_study", lambda m: m.main([])),
])
def test_scripts_that_need_real_inputs_say_what_to_run_first(name, call, capsys):
    """A results file, a tree or GDSC data cannot be made here: one line naming the command
    that makes it, exit 2."""
    err = _one_line_exit(capsys, lambda: call(_bench_module(name)))
    assert err.startswith(f"{name}.py: ") and "python -m hbl_mpi" in err


def test_missing_named_inputs_are_one_line(tmp_path, capsys):
    missing = str(tmp_path / "absent.h5")
    err = _one_line_exit(capsys, lambda: _bench_module("adaptive_study").main(["--results", missing,
                                                                                "--data", missing]))
    assert err.startswith(f"adaptive_study.py: {missing} does not exist")
    err = _one_line_exit(capsys, lambda: _bench_module("paper_findings").check([missing]))
    assert err.startswith(f"paper_findings.py: {missing} does not exist")
    err = _one_line_exit(capsys, lambda: _bench_module("impact_study").main(["--work", str(tmp_path), "--tables"]))
    assert err.startswith("impact_study.py: ") and "summary.json does not exist" in err
    for name, call in (
            ("file_workflow", lambda m: m.main(["--work", str(tmp_path / "w"), "--set", f"data='{missing}'"])),
            ("ckpt_overhead", lambda m: m.cli(["--data", missing, "--root", str(tmp_path / "r")]))):
        with pytest.raises(SystemExit) as e:
            call(_bench_module(name))
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"{name}.py: data file {missing} does not exist"), err
    assert not (tmp_path / "w").exists()  # nothing replaced before the inputs are known good


def test_benchkit_makes_missing_data_once(tmp_path, capsys):
    """The shared helper writes a synthetic Uno file when it is missing (saying so), and
    leaves an existing one alone."""
    from hbl_mpi.data import read_uno, synthesize

    kit = _benchkit()
    path = tmp_path / "sub" / "d.h5"
    got = kit.ensure_data(str(path), "x.py", preset="small", seed=2, cells=24, drugs=8)
    assert got == str(path) and path.exists()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"x.py: {path} is missing: making it (synthetic preset small, seed 2, cells=24, drugs=8)"
    assert lines[1].startswith(f"x.py: made {path} in ")
    ds, want = read_uno(str(path)), synthesize("small", seed=2, cells=24, drugs=8)
    assert list(ds.cell_ids) == list(want.cell_ids) and ds.n_rows == want.n_rows
    before = path.stat().st_mtime_ns
    assert kit.ensure_data(str(path), "x.py", preset="small", seed=2, cells=24, drugs=8) == str(path)
    assert capsys.readouterr().out == "" and path.stat().st_mtime_ns == before


def test_benchkit_demo_data_is_the_readmes_and_other_files_must_exist(tmp_path, capsys):
    kit = _benchkit()
    assert kit.DEMO_DATA == str(ROOT / "demo" / "small.h5") and (kit.DEMO_PRESET, kit.DEMO_SEED) == ("small", 1)
    present = tmp_path / "present.h5"
    present.write_bytes(b"x")
    assert kit.ensure_demo_data(str(present), "x.py") == str(present)
    err = _one_line_exit(capsys, lambda: kit.ensure_demo_data(str(tmp_path / "absent.h5"), "bench/x.py"))
    assert err.startswith(f"x.py: data file {tmp_path / 'absent.h5'} does not exist")


def test_benchkit_starts_an_mpi_bench_under_mpiexec(monkeypatch, capsys):
    """Plain ``python bench/fork.py`` becomes ``mpiexec -n 3 python bench/fork.py``; under a
    launcher nothing happens (a wrong rank count is the script's own one-line error)."""
    kit = _benchkit()
    calls = []
    monkeypatch.setattr(kit.os, "execv", lambda exe, cmd: calls.append((exe, cmd)))
    for var in kit._LAUNCHER_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(kit, "mpiexec_path", lambda: "/x/mpiexec")
    kit.mpiexec_self(str(BENCH / "fork.py"), 3, ["--reps", "2"])
    assert calls == [("/x/mpiexec", ["/x/mpiexec", "-n", "3", sys.executable, str(BENCH / "fork.py"), "--reps", "2"])]
    assert capsys.readouterr().out.startswith("fork.py: not started by mpiexec: running `mpiexec -n 3 python "
                                              "bench/fork.py --reps 2`")
    monkeypatch.setenv("PMI_RANK", "0")
    kit.mpiexec_self(str(BENCH / "fork.py"), 3)
    assert len(calls) == 1
    monkeypatch.delenv("PMI_RANK")
    monkeypatch.setattr(kit, "mpiexec_path", lambda: None)
    err = _one_line_exit(capsys, lambda: kit.mpiexec_self(str(BENCH / "fork.py"), 3))
    assert err.startswith("fork.py: needs mpiexec")


def _no_args(name: str, tmp_path, seconds: float) -> tuple[object, str, str]:
    """``python bench/NAME.py`` (no arguments, TMPDIR = tmp_path) for at most ``seconds``; the
    whole process group is ended then. Returns (exit code or "running", stdout, stderr)."""
    import os
    import signal
    import subprocess

    from mpiutil import mpi_env

    env = dict(mpi_env(), TMPDIR=str(tmp_path))
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        p = subprocess.Popen([sys.executable, str(BENCH / f"{name}.py")], stdout=out, stderr=err, env=env,
                             cwd=tmp_path, start_new_session=True)
        try:
            code = p.wait(seconds)
        except subprocess.TimeoutExpired:
            code = "running"
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    return code, (tmp_path / "out").read_text(), (tmp_path / "err").read_text()


@pytest.mark.slow  # real no-argument runs, to the end
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["simulate", "adaptive_study", "gdsc_study", "paper_findings"])
def test_bench_runs_with_no_arguments(name, tmp_path):
    """The scripts whose no-argument run takes a minute or less, run to the end: a JSON
    object last, or the one line saying what to run first."""
    code, out, err = _no_args(name, tmp_path, 280)
    assert "Traceback" not in err, err[-3000:]
    if name == "simulate":
        assert code == 0, err[-3000:]
        json.loads(out.strip().splitlines()[-1])
    else:
        assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith(f"{name}.py: "), (code, out, err)


@pytest.mark.slow  # real no-argument runs, until the work has started
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name, seconds", [
    ("fork", 20), ("schedule", 20), ("train", 15), ("group", 15), ("file_workflow", 20), ("ckpt_overhead", 20),
    ("detection_study", 15), ("diagnosis_study", 15), ("impact_study", 15), ("sibling_noise", 15), ("startup", 8)])
def test_heavy_bench_starts_with_no_arguments(name, seconds, tmp_path):
    """Benchmarks that take over a minute here (fork and schedule: 1-1.5 min, under mpiexec,
    which they start themselves; the rest minutes to hours) run for a few seconds: each says
    on its first line what it runs and where, makes its data (the file workflow and checkpoint benches make the
    README's demo/small.h5 when missing, as the README's first command does) and is still
    working, or finished, when stopped; nothing raised."""
    import shutil

    try:
        code, out, err = _no_args(name, tmp_path, seconds)
    finally:
        shutil.rmtree(tmp_path / "hbl_startup", ignore_errors=True)  # a partial Top21 file is large
    assert "Traceback" not in err and "Error" not in err, err[-3000:]
    assert code in ("running", 0), (code, err[-3000:])
    assert out.splitlines()[0].startswith(f"{name}.py: "), out
