"""A plug-in model end to end: the serial driver and mpiexec give the same node table bit for
bit, the results carry the model line, and a bad model exits 2 before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mpiutil import run_mpi, run_py
from tinyrun import write_3x2_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory):
    """The 3x2 tiny tree with examples/my_model.py (copied beside the config: the path is
    relative to it) and AdamW, trained by the serial driver."""
    root = tmp_path_factory.mktemp("plugin")
    shutil.copy(ROOT / "examples" / "my_model.py", root / "my_model.py")
    cfg = write_3x2_run(root)
    cfg.write_text(cfg.read_text().replace('model = "tiny"', 'model = "my_model.py:build"')
                   + 'optimizer = "adamw"\nweight_decay = 0.01\n[model_params]\nhidden = 8\nrank = 3\n')
    proc = run_py(["-m", "hbl_mpi", "run", str(cfg), "--serial", "--out", str(root / "serial")], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, cfg


def test_plugin_run_records_the_model_line(plugin_run):
    from hbl_mpi.models.plugin import file_hash
    from hbl_mpi.store.results import read_results

    root, _ = plugin_run
    run = read_results(str(root / "serial" / "results.h5"))
    assert run.versions["model"] == "my_model.py:build"
    assert run.versions["model_source"] == file_hash(str(root / "my_model.py"))
    assert run.versions["model_parameters"] > 0
    assert run.config["model_params"] == {"hidden": 8, "rank": 3} and run.config["optimizer"] == "adamw"


@pytest.mark.timeout(300)
def test_plugin_model_under_mpiexec_matches_serial_bit_for_bit(plugin_run):
    root, cfg = plugin_run
    out = root / "mpi3"
    proc = run_mpi(3, ["-m", "hbl_mpi", "run", str(cfg), "--out", str(out)], timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ref = pd.read_hdf(root / "serial" / "results.h5", "nodes").set_index("node")
    got = pd.read_hdf(out / "results.h5", "nodes").set_index("node").loc[ref.index]
    for col in ("val_loss", "val_loss_last", "test_loss", "train_loss"):
        np.testing.assert_array_equal(got[col].to_numpy(), ref[col].to_numpy(), err_msg=col)
    for col in ("epochs_run", "steps", "start_checksum", "inherit_checksum", "status"):
        assert list(got[col]) == list(ref[col]), col


def test_a_bad_plugin_exits_2_before_writing_anything(plugin_run, tmp_path):
    root, cfg = plugin_run
    (tmp_path / "bad.py").write_text("from torch import nn\ndef build(inputs, params):\n"
                                     "    return nn.Linear(inputs.groups[0][1], 2)\n")
    out = tmp_path / "out"
    proc = run_py(["-m", "hbl_mpi", "run", str(cfg), "--serial", "--out", str(out),
                   "--set", f"model={tmp_path / 'bad.py'}:build", "--set", "model_params={}"], timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and "model bad.py:build" in err[0], err
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_plugin_restart_after_kill9_gives_the_uninterrupted_table(plugin_run, tmp_path):
    """kill -9 the serial driver mid-run, restart: the node table is the uninterrupted one's;
    then a changed model file is refused (exit 2)."""
    import signal
    import subprocess
    import sys
    import time

    root, cfg = plugin_run
    out = tmp_path / "killed"
    # stage-2 nodes sleep 3 s per epoch (a sleep: the numbers do not change), so the kill
    # lands mid-tree whatever the host's load
    slow = ["--set", "fault_slow_nodes=" + ",".join(f"1.{i}.{j}" for i in (1, 2, 3) for j in (1, 2, 3)),
            "--set", "fault_slow_seconds=3.0"]
    cmd = [sys.executable, "-m", "hbl_mpi", "run", str(cfg), "--serial", "--out", str(out),
           "--set", "ckpt_enabled=true", *slow]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    for line in proc.stdout:  # kill -9 once the progress line says 10 nodes are done
        if "10/12 done" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = run_py(["-m", "hbl_mpi", "run", str(cfg), "--serial", "--out", str(out), "--set", "ckpt_enabled=true",
                    "--restart"], timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    decided = json.loads((out / "restart.json").read_text())
    # killed mid-run: finished nodes skipped or resumed from checkpoints, the rest trained again
    assert len(decided["done"]) < 12 and (decided["done"] or decided["resumable"]), decided
    ref = pd.read_hdf(root / "serial" / "results.h5", "nodes").set_index("node")
    got = pd.read_hdf(out / "results.h5", "nodes").drop_duplicates("node", keep="last").set_index("node")
    got = got.loc[ref.index]
    for col in ("val_loss", "test_loss"):
        np.testing.assert_array_equal(got[col].to_numpy(), ref[col].to_numpy(), err_msg=col)
    assert list(got["inherit_checksum"]) == list(ref["inherit_checksum"])
    shutil.copy(root / "my_model.py", tmp_path / "keep.py")
    try:
        (root / "my_model.py").write_text((tmp_path / "keep.py").read_text() + "\n# edited\n")
        changed = run_py(["-m", "hbl_mpi", "run", str(cfg), "--serial", "--out", str(out), "--restart"], timeout=120)
        assert changed.returncode == 2 and "has changed since the previous run" in changed.stderr
    finally:
        shutil.copy(tmp_path / "keep.py", root / "my_model.py")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_plugin_model_trains_in_a_rank_group(plugin_run):
    """group_size 2 (the sharded AdamW step) with the plug-in: every node done, and the first
    epoch's loss equals the serial run's up to float reassociation of the sharded sums."""
    root, cfg = plugin_run
    out = root / "group"
    proc = run_mpi(3, ["-m", "hbl_mpi", "run", str(cfg), "--out", str(out), "--set", "group_size=2"], timeout=280)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    nodes = pd.read_hdf(out / "results.h5", "nodes")
    assert (nodes["status"] == "done").all() and len(nodes) == 12
    ref = pd.read_hdf(root / "serial" / "results.h5", "history").set_index(["node", "epoch"])
    got = pd.read_hdf(out / "results.h5", "history").set_index(["node", "epoch"])
    assert got.loc[("1.1", 1), "loss"] == pytest.approx(ref.loc[("1.1", 1), "loss"], rel=1e-5)
