"""Where torch runs: the device a config names and the rank's share of the host's cores.

Both are decided per rank before any tensor is built; the trainer, the baselines and the run
drivers all ask here, so "auto" and a missing CUDA device mean the same thing everywhere.
"""

from __future__ import annotations

import os

import torch

from hbl_mpi.core.errors import InputError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device = 'cuda' but torch sees no CUDA device (use device = 'cpu' or 'auto')")
    return torch.device(name)


def default_threads(ranks_on_host: int) -> int:
    """The rank's share of the host's cores (at least 1).

    When a launcher pinned this rank to a subset of the cores (``jsrun -c 7 -b rs``,
    ``srun --cpus-per-task``), that subset already is the rank's share; otherwise the
    host's cores are divided among the ranks on it.
    """
    total = os.cpu_count() or 1
    try:
        mine = len(os.sched_getaffinity(0))
    except AttributeError:
        mine = total
    if mine < total:
        return max(1, mine)
    return max(1, total // max(1, ranks_on_host))
