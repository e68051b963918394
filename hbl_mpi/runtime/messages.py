"""Control messages between the scheduler (rank 0) and the workers.

Small dataclasses, sent pickled on ``COMM_WORLD`` with the tags below. Tensors never
travel this way: model states go worker-to-worker with the buffer API (``transfer.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hbl_mpi.tree.policy import Source

TAG_CTRL = 11  # scheduler -> worker
TAG_REPORT = 12  # worker -> scheduler
TAG_STATE_BASE = 1000  # worker -> worker state transfers: base + 2 * (transfer_id % TAG_STATE_SPAN)
TAG_STATE_SPAN = 15000


@dataclass
class Assign:
    """Train ``node``; the initial state comes from ``source`` (see policy.Placement)."""

    node: str
    source: Source
    source_group: int | None = None
    transfer_id: int = -1


@dataclass
class SendState:
    """Send the held state of ``node`` to the same-position rank of ``dest_group``."""

    node: str
    dest_group: int
    transfer_id: int


@dataclass
class Release:
    """No further sends of ``node``'s state will be asked: free it once sends complete."""

    node: str


@dataclass
class Stop:
    """The run is over: finish pending sends, then exit the worker loop."""

    reason: str = "done"


@dataclass
class NodeReport:
    """A trained (``ok``) or failed node, as plain data: the one record of a node's outcome.

    The node's runner returns it (``lifecycle.NodeRunner.run``), a worker's group leader
    sends it to rank 0 with its ``group`` filled in, and the ledger records it; the serial
    driver records it directly (``group`` 0). ``payload`` is ``results.payload`` (row
    fields, history, per-cell tables); ``error`` the failure's one line.
    """

    node: str
    ok: bool
    payload: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    group: int = 0


@dataclass
class WorkerFatal:
    """A worker hit an error outside node work; the scheduler aborts the job."""

    rank: int
    error: str
