"""Per-node epoch checkpoints (CANDLE's conventions) and restarting a run from them.

Which file holds what:

* ``params.py``  ``CkptParams``: the run's ``ckpt_*`` settings, built from ``RunConfig`` only;
* ``format.py``  what a checkpoint is on disk: layout, bookkeeping encoding, checksums;
* ``keep.py``    the keep rule: which epochs are written, which is ``best``, which are kept;
* ``store.py``   ``NodeCheckpoints``: one node's checkpoints, written crash-atomically, loaded verified;
* ``writer.py``  ``AsyncCheckpointWriter``: the background thread that does the disk I/O;
* ``session.py`` ``Checkpointing``: a training process resumes nodes, writes epochs, reads parents;
* ``restart.py`` restart planning: the run fingerprint, what ``--restart`` skips, reruns, resumes.

This module only re-exports.
"""

from hbl_mpi.checkpoint.format import WRITE_STEPS
from hbl_mpi.checkpoint.keep import keep_epochs
from hbl_mpi.checkpoint.params import CkptParams
from hbl_mpi.checkpoint.restart import TRAINING_KEYS, RestartInfo, check_compatible, drop_rerun, plan_restart, run_fingerprint
from hbl_mpi.checkpoint.session import (CheckpointMismatch, Checkpointing, NodeSession, final_state, open_checkpointing,
                      parent_state_from_checkpoint)
from hbl_mpi.checkpoint.store import Checkpoint, NodeCheckpoints, SavePlan, restart_check
from hbl_mpi.checkpoint.writer import AsyncCheckpointWriter, CheckpointWriteError

__all__ = [
    "WRITE_STEPS", "AsyncCheckpointWriter", "Checkpoint", "CheckpointMismatch", "CheckpointWriteError",
    "Checkpointing", "CkptParams", "NodeCheckpoints", "NodeSession", "RestartInfo", "SavePlan",
    "TRAINING_KEYS", "check_compatible", "drop_rerun", "final_state", "keep_epochs", "open_checkpointing",
    "parent_state_from_checkpoint", "plan_restart", "restart_check", "run_fingerprint",
]
