"""Restart planning (rank 0, before any training): what ``run --restart`` skips, reruns and
resumes, and whether the earlier run is this run at all (its fingerprint, its data).

* ``run_fingerprint``: 16 hex digits naming what the nodes compute (the training keys and
  the data's checksum); every checkpoint is stamped with it, so checkpoints of another
  run are never taken for this one's.
* ``check_compatible``: the earlier run's results were made with the same training keys
  and the same data. Data are compared by content (results.h5 carries the data
  checksum): the same file spelled ``./d.h5``, by an absolute path or through a moved
  config is the same data; another file at the same path is not (exit 2).
* ``plan_restart``: finished nodes are skipped unless an unfinished child needs their
  state and no verified final checkpoint holds it (killed before the background writer
  got to it, checkpoints off, a damaged ``model.pt``): those run again, which may in turn
  need their own parent's state, up to the root.

Without checkpoints (``ckpt_enabled = false`` or ``ckpt_restart_mode = off``) a restart
still skips every finished node whose state nobody needs, but a finished node with
unfinished children is run again (and with it any finished ancestor whose state is
needed): its state exists nowhere else. On CPU the rerun gives the same numbers; the
restart says how many nodes it reruns and why.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field

from hbl_mpi.core.atomic import replace_text
from hbl_mpi.core.config import TREE_KEYS, RunConfig
from hbl_mpi.core.errors import InputError
from hbl_mpi.tree.plan import Plan, node_sort_key, stage_of
from hbl_mpi.store.provenance import check_same_data
from hbl_mpi.store.results import RunTables
from hbl_mpi.checkpoint.format import info_metadata
from hbl_mpi.checkpoint.params import CkptParams
from hbl_mpi.checkpoint.session import CheckpointMismatch, final_state
from hbl_mpi.checkpoint.store import NodeCheckpoints, restart_check

#: Config keys that change what a node computes: a checkpoint (or a results file) made
#: with other values cannot be continued. ``threads``/``device`` change only rounding.
TRAINING_KEYS = ("n", "s", "order", "seed", "partition", "holdout_fraction", "model", "strategy",
                 "epochs", "inherit", "patience", "min_delta", "batch_size", "learning_rate", "dropout",
                 "batch_order", "groups")
NEW_KEY_DEFAULTS = {"batch_order": "node", "groups": ""}
"""Training keys added after runs were fingerprinted: at their default they stay out of the
fingerprint, so a run of an older version restarts as before."""


def run_fingerprint(cfg: RunConfig, data_checksum: str) -> str:
    """16 hex digits identifying what the nodes of this run compute (config + data)."""
    keys = [k for k in TRAINING_KEYS if k not in NEW_KEY_DEFAULTS or getattr(cfg, k) != NEW_KEY_DEFAULTS[k]]
    blob = json.dumps({"config": {k: getattr(cfg, k) for k in keys}, "data": data_checksum},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_compatible(previous: RunTables, cfg: RunConfig, data_checksum: str) -> None:
    """InputError unless the earlier run trained the same nodes on the same data."""

    old = {**NEW_KEY_DEFAULTS, **previous.config}  # a run from before a key existed ran at its default
    for key in TRAINING_KEYS + TREE_KEYS:
        if key in old and old[key] != getattr(cfg, key):
            raise InputError(f"--restart: config key {key!r} was {old[key]!r} in the previous run, now "
                             f"{getattr(cfg, key)!r}; restart with the same settings or another --out")
    check_same_data(previous.data_checksum, str(old.get("data", "")), cfg.data, data_checksum, who="--restart",
                    results=getattr(previous, "path", "") or "results.h5", remedy="restart with the same data or another --out",
                    paths_must_agree=True)


@dataclass
class RestartInfo:
    """What rank 0 decided about a run before training (plain data, broadcast to workers).

    ``restart`` is False for a fresh run (then only ``mode``/``fingerprint`` matter: the
    workers write checkpoints stamped with the fingerprint and never read old ones).
    """

    restart: bool
    mode: str  # ckpt_restart_mode
    fingerprint: str
    data_checksum: str = ""
    done: set[str] = field(default_factory=set)  # finished nodes: not run again
    rerun: list[str] = field(default_factory=list)  # finished, but their state is needed and lost
    rerun_why: dict[str, str] = field(default_factory=dict)  # rerun node -> why its checkpoint is unusable
    parents_from_ckpt: dict[str, str] = field(default_factory=dict)  # parent -> inherit checksum
    resumable: dict[str, int] = field(default_factory=dict)  # unfinished node -> epoch of `last`
    foreign: list[str] = field(default_factory=list)  # checkpoints of another run (ignored)
    seconds: float = 0.0  # time spent deciding

    @property
    def reads_checkpoints(self) -> bool:
        return self.restart and self.mode != "off"

    def as_dict(self) -> dict:
        """The decision as JSON-ready data (``OUT/restart.json``: what tools and tests read;
        the log lines are for people and shorten long lists)."""
        return {"restart": self.restart, "mode": self.mode, "fingerprint": self.fingerprint,
                "done": sorted(self.done, key=node_sort_key), "rerun": list(self.rerun),
                "rerun_why": dict(self.rerun_why), "parents_from_ckpt": sorted(self.parents_from_ckpt,
                                                                               key=node_sort_key),
                "resumable": dict(self.resumable), "foreign": list(self.foreign),
                "seconds": round(self.seconds, 4)}

    def write(self, path: str) -> None:
        """Write ``as_dict`` to ``path`` atomically."""
        replace_text(path, json.dumps(self.as_dict(), indent=1) + "\n")

    def summary(self, total: int) -> list[str]:
        """Lines for the log: what the restart skips, reruns and resumes."""
        if not self.restart:
            return []
        out = [f"restart: {len(self.done)} of {total} nodes finished before and skipped; "
               f"{len(self.parents_from_ckpt)} pass their state on from a checkpoint; "
               f"{len(self.resumable)} unfinished nodes resume from their last epoch checkpoint "
               f"(decided in {self.seconds:.2f} s)"]
        if self.rerun:
            why = ("checkpoints are off for this restart (ckpt_restart_mode = off)" if self.mode == "off"
                   else "no usable final checkpoint holds their state")
            shown = ", ".join(self.rerun[:8]) + (" ..." if len(self.rerun) > 8 else "")
            out.append(f"restart: {len(self.rerun)} finished nodes run again because unfinished children "
                       f"need their state and {why}: {shown}")
            damaged = [f"{n} ({self.rerun_why[n]})" for n in self.rerun if "damaged" in self.rerun_why.get(n, "")]
            if damaged:
                out.append(f"restart: damaged final checkpoints: {'; '.join(damaged[:4])}"
                           + (" ..." if len(damaged) > 4 else ""))
        if self.foreign:
            out.append(f"restart: ignoring checkpoints of {len(self.foreign)} nodes made by a run with "
                       "other settings or data")
        return out


def plan_restart(plan: Plan, params: CkptParams, fingerprint: str, data_checksum: str, inherit: str,
                 previous: RunTables | None, restart: bool) -> RestartInfo:
    """Decide a restart on rank 0 (reads ckpt-info files, and the final checkpoints of the
    finished parents whose state is needed: each is verified here, so a damaged one makes
    its node run again instead of failing its children).

    ``previous`` is the earlier run's ``RunTables`` (or None when it never flushed a
    results file). Raises ``InputError`` for ``ckpt_restart_mode = required`` when there
    is no checkpoint of this run at all.
    """
    t0 = time.perf_counter()
    info = RestartInfo(restart=restart, mode=params.ckpt_restart_mode, fingerprint=fingerprint,
                       data_checksum=data_checksum)
    if not restart:
        return info
    trained = set(plan.trained_nodes())
    done = (previous.done_nodes() & trained) if previous is not None else set()
    rows = {}
    if previous is not None and len(previous.nodes):
        rows = previous.nodes.drop_duplicates("node", keep="last").set_index("node")
    found = restart_check(params)  # {} when off; InputError when required and none
    root = params.ckpt_directory
    stores = {n: NodeCheckpoints(root, n, params) for n in found if n in trained}
    info.foreign = sorted(n for n, s in stores.items()
                          if info_metadata(s.peek_last()).get("run_fingerprint") != fingerprint)
    if params.ckpt_restart_mode == "required" and not set(stores) - set(info.foreign):
        raise InputError(f"ckpt_restart_mode = required but the checkpoints in {root} were made by a run "
                         "with other settings or data")

    def needed(p: str) -> bool:  # (an adaptive node still undecided may get children)
        return any(c not in done for c in plan.nodes[p].children) or plan.may_grow(p)

    # Deepest stage first: whether a node's state is needed depends only on its children,
    # which are settled by then (a rerun child makes its parent needed), so one pass does.
    for p in sorted(done, key=lambda n: (-stage_of(n), node_sort_key(n))):
        if not needed(p):
            continue
        expected = str(rows.loc[p, "inherit_checksum"]) if p in rows.index else ""
        runs = int(rows.loc[p, "epochs_run"]) if p in rows.index else None
        why = "no checkpoint"
        if p in stores and p not in info.foreign:
            try:
                final_state(params, p, fingerprint, inherit, expected, runs)
                info.parents_from_ckpt[p] = expected
                continue
            except CheckpointMismatch as e:
                why = str(e)
        done.discard(p)
        info.rerun.append(p)
        info.rerun_why[p] = why
    info.done = done
    info.rerun = sorted(set(info.rerun), key=node_sort_key)
    info.resumable = {n: e for n, e in sorted(found.items(), key=lambda kv: node_sort_key(kv[0]))
                      if n in trained and n not in done and n not in info.foreign}
    info.seconds = time.perf_counter() - t0
    return info


def drop_rerun(previous: RunTables | None, rerun) -> RunTables | None:
    """The previous results without the nodes that run again (no duplicate rows)."""
    if previous is None or not rerun:
        return previous
    return previous.without(rerun)
