"""The tiny synthetic run that the MPI, restart and fault tests share: a data file and a
config over it, written into a test's folder (seconds to train on one core)."""

from __future__ import annotations

from pathlib import Path

TRAINING = {"patience": 2, "batch_size": 64, "learning_rate": 0.003, "model": "tiny", "seed": 5, "threads": 1,
            "flush_seconds": 0.0}
"""The training keys every tiny run uses (one thread, a flush per node)."""


def _toml(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f'"{value}"' if isinstance(value, str) else repr(value)


def write_tiny_run(root: Path, *, tree: dict, synth: dict, extra: dict | None = None) -> Path:
    """``root/tiny.h5`` (synthetic data, seed 3, ``synth`` sizes) and ``root/run.toml``: the
    ``tree`` keys (n, s, strategy), then :data:`TRAINING`, then ``extra``; returns the config."""
    from hbl_mpi.data import synthesize, write_uno

    data = root / "tiny.h5"
    write_uno(synthesize("small", seed=3, **synth), str(data))
    keys = {"data": str(data), **tree, **TRAINING, **(extra or {})}
    path = root / "run.toml"
    path.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in keys.items()))
    return path


def write_3x2_run(root: Path) -> Path:
    """The run test_run_mpi and test_restart compare bit for bit: N=3, S=2 (12 nodes), exp2:3,
    over 36 cells and 10 drugs."""
    return write_tiny_run(root, tree={"n": 3, "s": 2, "strategy": "exp2:3"}, synth={"cells": 36, "drugs": 10})
