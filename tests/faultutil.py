"""Shared by test_faults.py and test_soak.py: the tiny faulty run and what must hold after it."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pandas as pd

from tinyrun import write_tiny_run

NODES = ["1.1", "1.2", "1.1.1", "1.1.2", "1.2.1", "1.2.2"]
TINY_TREE = """
data = "d.h5"
n = 2
s = 2
strategy = "flat:2"
model = "tiny"
batch_size = 64
threads = 1
flush_seconds = 0.0
"""
"""The six-node tree over ``d.h5`` without checkpoints (test_out_dir, test_quiet, test_stall_mpi)."""


def all_nodes_slow(seconds: float) -> str:
    """Config lines that make every node of TINY_TREE sleep ``seconds`` per epoch."""
    return f"fault_slow_nodes = {NODES!r}\nfault_slow_seconds = {seconds}\n".replace("'", '"')


class RunsCode:
    """Unpickling this creates the file ``path``: the proof that reading a file ran code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))
EXIT_LIMIT_S = 30.0


def write_config(root: Path) -> Path:
    """A tiny data set (24 cells) and the run config over it, in ``root``; returns the config."""
    return write_tiny_run(root, tree={"n": 2, "s": 2, "strategy": "flat:2"},
                          synth={"cells": 24, "drugs": 8, "cell_features": 8, "descriptors": 6, "fingerprints": 0},
                          extra={"ckpt_enabled": True})


def sets(**faults) -> list[str]:
    out = []
    for key, value in faults.items():
        out += ["--set", f"{key}={value!r}".replace("'", '"')]
    return out


def run_cmd(cfg, out, *extra) -> list[str]:
    return ["-m", "hbl_mpi", "run", str(cfg), "--out", str(out), *extra]




def check_intact(out) -> pd.DataFrame:
    """The results file reads; every node it lists as done is really done; no node twice."""
    path = os.path.join(out, "results.h5")
    nodes = pd.read_hdf(path, "nodes")
    history = pd.read_hdf(path, "history")
    cell_val = pd.read_hdf(path, "cell_val")
    plan = pd.read_hdf(path, "plan")
    assert nodes["node"].is_unique, nodes["node"].tolist()
    assert set(nodes["node"]) <= set(plan["node"]) == set(NODES)
    done = nodes[nodes["status"] == "done"]
    for row in done.itertuples():
        assert math.isfinite(row.val_loss) and math.isfinite(row.test_loss), row.node
        assert row.epochs_run >= 1
        h = history[history["node"] == row.node]
        assert sorted(h["epoch"]) == list(range(1, row.epochs_run + 1)), row.node
        assert (cell_val["node"] == row.node).sum() > 0, row.node
        assert row.parent == "1" or row.parent in set(done["node"]), f"{row.node} done, parent not"
    assert set(history["node"]) <= set(done["node"]) and set(cell_val["node"]) <= set(done["node"])
    return nodes.set_index("node")


def check_complete(out) -> None:
    nodes = check_intact(out)
    assert sorted(nodes.index) == sorted(NODES), "every plan node exactly once"
    assert (nodes["status"] == "done").all(), nodes["status"].to_dict()


def crash_seconds(run, rank: int, kind: str) -> float | None:
    """Seconds from an injected crash (the wall time its stderr line carries) to the moment no
    process of the job remained; None when that crash did not happen."""
    line = run.line(f"rank {rank}: injected crash ({kind})")
    if line is None:
        return None
    return run.end - float(re.search(r"at unix time ([0-9.]+)", line).group(1))
