"""``OUT/results.h5``: the run's tables, written by rank 0 only (DESIGN §6).

Crash safety by construction: every flush writes the whole file to ``results.h5.tmp``,
fsyncs it and ``os.replace``s it over ``results.h5``. A ``kill -9`` at any instant
leaves either the previous complete file or the new one, never a torn HDF5 file, and
the file holds every node reported before the last flush. The tables are small (the
normalised design keeps per-node output to a few rows), so rewriting is cheap; flushes
are rate-limited by ``flush_seconds`` and forced at the end.

``read_results`` + ``ResultsWriter(restart=True)`` continue a run: finished nodes are
loaded back and not run again, so restarted files have no duplicate rows.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import InputError

NODE_COLUMNS = [
    "node", "parent", "stage", "status", "group", "start", "stop", "epochs_planned", "epochs_run",
    "stopped_early", "train_loss", "val_loss", "val_loss_last", "test_loss", "n_train_rows",
    "n_val_rows", "n_train_cells", "n_val_cells", "steps", "train_s", "transfer_s", "error",
    "best_epoch", "start_checksum", "inherit_checksum", "source", "rank", "resumed_from",
]
HISTORY_COLUMNS = ["node", "epoch", "loss", "val_loss", "seconds"]
CELL_VAL_COLUMNS = ["node", "cell", "n_rows", "mse"]
TABLES = ("nodes", "history", "cell_val", "plan", "truth")

_FLOAT_NODE = {"start", "stop", "train_loss", "val_loss", "val_loss_last", "test_loss", "train_s", "transfer_s"}
_INT_NODE = {"stage", "group", "epochs_planned", "epochs_run", "n_train_rows", "n_val_rows",
             "n_train_cells", "n_val_cells", "steps", "best_epoch", "rank", "resumed_from"}


def results_path(out_dir: str) -> str:
    return os.path.join(out_dir, "results.h5")


ADAPTIVE_NODE_COLUMNS = ["expanded_by"]  # adaptive runs only: why the node was created


def _nodes_frame(rows: list[dict]) -> pd.DataFrame:
    cols = NODE_COLUMNS + [c for c in ADAPTIVE_NODE_COLUMNS if any(c in r for r in rows)]
    df = pd.DataFrame(rows, columns=cols)
    for c in cols:
        if c in _FLOAT_NODE:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
        elif c in _INT_NODE:
            df[c] = pd.to_numeric(df[c], errors="coerce").fillna(-1).astype("int64")
        elif c == "stopped_early":
            df[c] = df[c].fillna(False).astype(bool)
        else:
            df[c] = df[c].fillna("").astype(str).astype(object)
    return df


@dataclass
class FinishedRun:
    """What a previous run's results file says (for ``--restart``)."""

    nodes: pd.DataFrame
    history: pd.DataFrame
    cell_val: pd.DataFrame
    config: dict

    def done_nodes(self) -> set[str]:
        return set(self.nodes.loc[self.nodes["status"] == "done", "node"])


def read_results(path: str) -> FinishedRun:
    """Load a results file; InputError if it is not one."""
    if not os.path.isfile(path):
        raise InputError(f"results file {path!r} does not exist")
    try:
        with pd.HDFStore(path, mode="r") as store:
            keys = {k.lstrip("/") for k in store.keys()}
            missing = {"nodes", "history", "cell_val"} - keys
            if missing:
                raise InputError(f"{path!r} is not an hbl_mpi results file (missing {', '.join(sorted(missing))})")
            attrs = store.get_storer("nodes").attrs
            config = dict(getattr(attrs, "config", {}) or {})
            return FinishedRun(store["nodes"], store["history"], store["cell_val"], config)
    except InputError:
        raise
    except Exception as e:  # HDF5 errors come in many types
        raise InputError(f"cannot read results file {path!r}: {type(e).__name__}: {e}") from None


class ResultsWriter:
    """Accumulates node results in memory; ``flush`` rewrites the file atomically."""

    def __init__(
        self,
        path: str,
        *,
        config: dict,
        versions: dict,
        data_checksum: str,
        plan_frame: pd.DataFrame,
        truth: pd.DataFrame | None,
        flush_seconds: float = 2.0,
        previous: FinishedRun | None = None,
    ):
        self.path = path
        self.config = config
        self.versions = versions
        self.data_checksum = data_checksum
        self.plan_frame = plan_frame
        self.truth = truth
        self.flush_seconds = flush_seconds
        self.node_rows: list[dict] = []
        self.history: list[pd.DataFrame] = []
        self.cell_val: list[pd.DataFrame] = []
        self._history_rows: list[dict] = []
        self._cell_val_parts: list[tuple] = []
        self._last_flush = 0.0
        self._last_duration = 0.0
        self._dirty = False
        self.flush_time = 0.0
        self.flushes = 0
        if previous is not None:
            done = previous.nodes[previous.nodes["status"] == "done"]
            keep = set(done["node"])
            self.node_rows = done.to_dict("records")
            self.history.append(previous.history[previous.history["node"].isin(keep)])
            self.cell_val.append(previous.cell_val[previous.cell_val["node"].isin(keep)])

    def add(self, row: dict, history: list[dict] | None = None, cell_val=None) -> None:
        """Record one node. ``cell_val`` is ``(cell_ids, n_rows, mse)`` arrays (or a frame).

        Plain lists are appended here and frames built only at flush time: a report costs
        rank 0 microseconds, not a pandas construction.
        """
        self.node_rows.append(row)
        if history:
            self._history_rows.extend(history)
        if cell_val is not None:
            if isinstance(cell_val, pd.DataFrame):
                self.cell_val.append(cell_val[CELL_VAL_COLUMNS])
            elif len(cell_val[0]):
                cells, n_rows, mse = cell_val
                self._cell_val_parts.append((row["node"], cells, n_rows, mse))
        self._dirty = True

    def maybe_flush(self) -> bool:
        """Flush when ``flush_seconds`` have passed *and* at least 50x the last flush's
        duration: rewriting the file never takes more than ~2 % of rank 0's time (rank 0's
        whole budget is 5 %; 20x measured 4.5 % on the demo, too close)."""
        interval = max(self.flush_seconds, 50.0 * self._last_duration)
        if self._dirty and time.monotonic() - self._last_flush >= interval:
            self.flush()
            return True
        return False

    def tables(self) -> dict[str, pd.DataFrame]:
        # fold the raw per-node records into frames once, so flushes don't redo the work
        if self._history_rows:
            self.history.append(pd.DataFrame(self._history_rows, columns=HISTORY_COLUMNS))
            self._history_rows = []
        if self._cell_val_parts:
            parts = self._cell_val_parts
            self.cell_val.append(pd.DataFrame({
                "node": np.concatenate([np.full(len(p[1]), p[0], dtype=object) for p in parts]),
                "cell": np.concatenate([np.asarray(p[1], dtype=object) for p in parts]),
                "n_rows": np.concatenate([np.asarray(p[2], dtype=np.int64) for p in parts]),
                "mse": np.concatenate([np.asarray(p[3], dtype=np.float64) for p in parts]),
            }))
            self._cell_val_parts = []
        if len(self.history) > 1:
            self.history = [pd.concat(self.history, ignore_index=True)]
        if len(self.cell_val) > 1:
            self.cell_val = [pd.concat(self.cell_val, ignore_index=True)]
        nodes = _nodes_frame(self.node_rows)
        hist = (pd.concat(self.history, ignore_index=True) if self.history
                else pd.DataFrame(columns=HISTORY_COLUMNS))
        hist = hist.astype({"node": object, "epoch": "int64", "loss": "float64",
                            "val_loss": "float64", "seconds": "float64"})
        cv = (pd.concat(self.cell_val, ignore_index=True) if self.cell_val
              else pd.DataFrame(columns=CELL_VAL_COLUMNS))
        cv = cv.astype({"node": object, "cell": object, "n_rows": "int64", "mse": "float64"})
        out = {"nodes": nodes, "history": hist, "cell_val": cv, "plan": self.plan_frame}
        if self.truth is not None:
            out["truth"] = self.truth
        return out

    def flush(self) -> None:
        """Write everything to ``path.tmp``, fsync, and atomically replace ``path``."""
        t0 = time.perf_counter()
        tmp = self.path + ".tmp"
        if os.path.exists(tmp):
            os.remove(tmp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PyTables performance warnings on object columns
            with pd.HDFStore(tmp, mode="w") as store:
                for key, df in self.tables().items():
                    # PyTables' table format silently stores nothing for an empty frame (then
                    # the file has no `nodes` to hold the attributes): the fixed format does
                    store.put(key, _hdf_safe(df), format="table" if len(df) else "fixed")
                attrs = store.get_storer("nodes").attrs
                attrs.config = self.config
                attrs.versions = self.versions
                attrs.data_checksum = self.data_checksum
                attrs.config_json = json.dumps(self.config, sort_keys=True, default=str)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self._dirty = False
        self._last_flush = time.monotonic()
        self._last_duration = time.perf_counter() - t0
        self.flush_time += self._last_duration
        self.flushes += 1


def _hdf_safe(df: pd.DataFrame) -> pd.DataFrame:
    """PyTables 'table' format wants numpy object strings, not pandas' string dtypes."""
    out = df.copy()
    for c in out.columns:
        if not (pd.api.types.is_numeric_dtype(out[c]) or pd.api.types.is_bool_dtype(out[c])):
            out[c] = np.asarray(out[c].astype(str), dtype=object)
    return out
