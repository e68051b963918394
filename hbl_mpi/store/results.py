"""``OUT/results.h5``: the run's tables, the one writer and the one reader (docs/design.md §6).

**Schema** (``store/schema.py``). :data:`SCHEMA` names every table, its columns and their
dtypes, and which of them a results file must have. The writer casts to it; :func:`read_results` checks it and
is the only reader: the analysis, the report and ``run --restart`` all load a file through
it, so a file one of them accepts the others accept too.

Crash safety by construction: every flush writes the whole file to a fresh temporary
name, fsyncs it, reads it back and ``os.replace``s it over ``results.h5`` (``atomic.py``).
A full disk leaves the previous file in place (``WriteFailed``). A ``kill -9`` at any instant
leaves either the previous complete file or the new one, never a torn HDF5 file, and
the file holds every node reported before the last flush. The tables are small (the
normalised design keeps per-node output to a few rows), so rewriting is cheap; flushes
are rate-limited by ``flush_seconds`` and forced at the end.

``read_results`` + ``ResultsWriter(previous=...)`` continue a run: the finished nodes of
the previous file are carried over and not run again, so restarted files have no
duplicate rows.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import KW_ONLY, dataclass, field, replace

import numpy as np
import pandas as pd

from hbl_mpi.core.atomic import replace_file
from hbl_mpi.core.errors import InputError
from hbl_mpi.core.hdf5_guard import check_file
from hbl_mpi.data.dataset import split_truth
from hbl_mpi.store.schema import (  # noqa: F401 (the schema, re-exported: read with the results)
    CELL_METADATA, CELL_NEIGHBOURS, CELL_PRED, CELL_TEST, CELL_VAL, DRUG_TEST, DRUG_VAL, HISTORY, NODES,
    PER_NODE_TABLES, PLAN, REQUIRED_PER_NODE, SCHEMA, TRUTH, Column, Dtype, Table)
from hbl_mpi.tree.plan import parent_of

def results_path(out_dir: str) -> str:
    return os.path.join(out_dir, "results.h5")


# ---------------------------------------------------------------------------
# the one reader
# ---------------------------------------------------------------------------
@dataclass
class RunTables:
    """One results file, as plain tables checked against :data:`SCHEMA`.

    A restart carries the per-node tables (``nodes``, ``history``, ``cell_val``,
    ``cell_test``) of its finished nodes over; ``label`` is the run's epoch strategy (the
    report makes it unique across the runs it shows).
    """

    nodes: pd.DataFrame
    history: pd.DataFrame
    cell_val: pd.DataFrame
    config: dict = field(default_factory=dict)
    _: KW_ONLY  # the rest by name only: a positional fifth argument is an error, never a shifted field
    cell_test: pd.DataFrame | None = None  # None: written before the table existed
    cell_pred: pd.DataFrame | None = None  # None: written before it existed, or data with doses
    cell_neighbours: pd.DataFrame | None = None
    plan: pd.DataFrame | None = None
    truth: pd.DataFrame | None = None  # the planted cells (cell, kind)
    drug_val: pd.DataFrame | None = None  # partition = "drugs" only
    drug_test: pd.DataFrame | None = None
    drug_truth: pd.DataFrame | None = None  # the planted drugs (drug, kind)
    cell_metadata: pd.DataFrame | None = None  # None: the data had none (or the file predates the table)
    versions: dict = field(default_factory=dict)
    data_checksum: str = ""
    path: str = ""
    label: str = ""

    def done_nodes(self) -> set[str]:
        return set(self.nodes.loc[self.nodes["status"] == "done", "node"])

    def per_node(self, name: str) -> pd.DataFrame | None:
        """One of ``PER_NODE_TABLES`` (None: this file predates it)."""
        return getattr(self, name)

    def without(self, nodes) -> RunTables:
        """The same run without the rows of ``nodes`` in any per-node table (for restarts)."""
        drop = set(nodes)

        def keep(df: pd.DataFrame | None) -> pd.DataFrame | None:
            return None if df is None else df[~df["node"].isin(drop)]

        return replace(self, nodes=keep(self.nodes), history=keep(self.history),
                       **{name: keep(self.per_node(name)) for name in PER_NODE_TABLES})

    @property
    def unit(self) -> str:
        """The partition unit the run held out: "drug" for ``partition = "drugs"``, else "cell"."""
        return "drug" if self.config.get("partition") == "drugs" else "cell"

    @property
    def group_size(self) -> int:
        try:
            return max(1, int(self.config.get("group_size", 1)))
        except (TypeError, ValueError):
            return 1

    @property
    def final_stage(self) -> int:
        s = self.config.get("s")
        if isinstance(s, (int, np.integer)) and s >= 1:
            return int(s)
        return int(self.nodes["stage"].max()) if len(self.nodes) else 0


def read_results(path: str) -> RunTables:
    """Load a results file; InputError (one line) when it is missing or not a results file."""
    if not os.path.exists(path):
        raise InputError(f"results file {path!r} does not exist")
    if not os.path.isfile(path):
        raise InputError(f"results file {path!r} is not a file")
    check_file(path, "results file")  # before pandas: PyTables would unpickle its attributes
    try:
        store = pd.HDFStore(path, mode="r")
    except Exception as e:  # HDF5 / PyTables raise many types for a non-HDF5 file
        raise InputError(f"cannot read results file {path!r}: not an HDF5 file ({type(e).__name__})") from None
    try:
        keys = {k.lstrip("/") for k in store.keys()}
        missing = [t.name for t in SCHEMA.values() if t.required and t.name not in keys]
        if missing:
            raise InputError(f"{path!r} is not an hbl_mpi results file (missing key(s): {', '.join(missing)})")
        tables = {}
        for name, table in SCHEMA.items():
            if name in keys:
                df = store[name]
                cols = table.missing_columns(df)
                if cols:
                    raise InputError(f"{path!r}: table {name!r} lacks column(s) {', '.join(cols)}")
                tables[name] = df
        config, versions, checksum = run_attributes(store.get_storer("nodes").attrs)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"cannot read results file {path!r}: {type(e).__name__}: {e}") from None
    finally:
        store.close()
    nodes = tables["nodes"]
    if "parent" not in nodes.columns:
        nodes = nodes.assign(parent=[parent_of(str(n)) for n in nodes["node"]])
    typed = {name: SCHEMA[name].read(nodes if name == "nodes" else df) for name, df in tables.items()}
    if typed["nodes"]["stage"].dtype != "int64":
        raise InputError(f"{path!r}: table 'nodes' has missing or non-numeric stages")
    twice = typed["nodes"]["node"][typed["nodes"]["node"].duplicated()].unique()
    if len(twice):  # the writer keeps one row per node: a hand-made or merged file; a restart would carry both
        shown = ", ".join(map(str, twice[:3])) + (", ..." if len(twice) > 3 else "")
        raise InputError(f"{path!r}: table 'nodes' has {len(twice)} node(s) with more than one row (first: {shown})")
    label = str(config.get("strategy") or os.path.splitext(os.path.basename(path))[0])
    truth, drug_truth = split_truth(typed.get("truth"))
    return RunTables(nodes=typed["nodes"], history=typed["history"], cell_val=typed["cell_val"], config=config,
                     cell_test=typed.get("cell_test"), cell_pred=typed.get("cell_pred"),
                     cell_neighbours=typed.get("cell_neighbours"), plan=typed.get("plan"), truth=truth,
                     drug_val=typed.get("drug_val"), drug_test=typed.get("drug_test"), drug_truth=drug_truth,
                     cell_metadata=_metadata(typed.get("cell_metadata")), versions=versions,
                     data_checksum=checksum, path=path, label=label)


def _metadata(df: pd.DataFrame | None) -> pd.DataFrame | None:
    """The metadata table with every column as strings ("" = missing), as ``data/metadata.py`` holds it."""
    if df is None:
        return None
    return pd.DataFrame({str(c): df[c].astype(object).where(df[c].notna(), "").astype(str) for c in df.columns})


def run_attributes(attrs) -> tuple[dict, dict, str]:
    """``(config, versions, data_checksum)`` from the ``nodes`` table's attributes.

    They are written as JSON strings (``config_json``, ``versions_json``): a string
    attribute is never unpickled. Files written before that hold pickled dicts
    (``config``, ``versions``), read only after ``hdf5_guard.check_file`` found that they
    import nothing.
    """
    def _dict(json_name: str, old_name: str) -> dict:
        text = getattr(attrs, json_name, None) if json_name in attrs._v_attrnames else None
        if text is not None:
            try:
                value = json.loads(str(text))
            except ValueError:
                value = None
            if isinstance(value, dict):
                return value
        old = getattr(attrs, old_name, None) if old_name in attrs._v_attrnames else None
        return dict(old) if isinstance(old, dict) else {}

    checksum = getattr(attrs, "data_checksum", "") if "data_checksum" in attrs._v_attrnames else ""
    return _dict("config_json", "config"), _dict("versions_json", "versions"), str(checksum or "")


class _PerNodeTable:
    """One per-node table being written: raw column arrays appended per node, folded into
    one frame (cast to the schema) at flush time."""

    def __init__(self, table: Table):
        self.table = table
        self.frames: list[pd.DataFrame] = []
        self.parts: list[tuple] = []

    def add(self, node: str, records) -> None:
        if isinstance(records, pd.DataFrame):
            self.frames.append(records[self.table.names])
        elif len(records[0]):
            self.parts.append((node, *records))

    def has_rows(self) -> bool:
        return bool(self.parts) or any(len(f) for f in self.frames)

    def frame(self) -> pd.DataFrame:
        if self.parts:
            parts, self.parts = self.parts, []
            cols = {"node": np.concatenate([np.full(len(p[1]), p[0], dtype=object) for p in parts])}
            for i, name in enumerate(self.table.names[1:], start=1):
                cols[name] = np.concatenate([np.asarray(p[i]) for p in parts])
            self.frames.append(pd.DataFrame(cols))
        if len(self.frames) > 1:
            self.frames = [pd.concat(self.frames, ignore_index=True)]
        return self.table.written(self.frames[0] if self.frames else [])


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
        previous: RunTables | None = None,
        static: dict[str, pd.DataFrame] | None = None,
    ):
        self.path = path
        self.config = config
        self.versions = versions
        self.data_checksum = data_checksum
        self.plan_frame = plan_frame
        self.truth = truth
        self.static = dict(static or {})  # run-level tables written as they are (cell_neighbours)
        self.flush_seconds = flush_seconds
        self.node_rows: list[dict] = []
        self.history: list[pd.DataFrame] = []
        self._history_rows: list[dict] = []
        self.per_node = {name: _PerNodeTable(SCHEMA[name]) for name in PER_NODE_TABLES}
        self._last_flush = 0.0
        self._last_duration = 0.0
        self._dirty = False
        self.flush_time = 0.0
        self.flushes = 0
        self.saved_done = 0  # finished nodes in the file on disk (as of the last good flush)
        if previous is not None:
            done = previous.nodes[previous.nodes["status"] == "done"]
            keep = set(done["node"])
            self.node_rows = done.to_dict("records")
            self.history.append(previous.history[previous.history["node"].isin(keep)])
            for name, acc in self.per_node.items():
                old = previous.per_node(name)
                if old is not None:
                    acc.add("", old[old["node"].isin(keep)])
            self.saved_done = len(self.node_rows)  # the previous file on disk holds them

    def add(self, row: dict, history: list[dict] | None = None, tables: dict | None = None) -> None:
        """Record one node. ``tables`` maps a per-node table (``PER_NODE_TABLES``) to its
        rows as column arrays in schema order without ``node`` (see :func:`node_tables`), or
        to a frame.

        Plain lists are appended here and frames built only at flush time: a report costs
        rank 0 microseconds, not a pandas construction.
        """
        self.node_rows.append(row)
        if history:
            self._history_rows.extend(history)
        for name, records in (tables or {}).items():
            if records is not None:
                self.per_node[name].add(row["node"], records)
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
            self.history.append(pd.DataFrame(self._history_rows, columns=HISTORY.names))
            self._history_rows = []
        if len(self.history) > 1:
            self.history = [pd.concat(self.history, ignore_index=True)]
        nodes = NODES.written(self.node_rows)
        hist = HISTORY.written(pd.concat(self.history, ignore_index=True) if self.history else [])
        out = {"nodes": nodes, "history": hist}
        for name, acc in self.per_node.items():
            if name in REQUIRED_PER_NODE or acc.has_rows():
                out[name] = acc.frame()
        out["plan"] = self.plan_frame
        if self.truth is not None:
            out["truth"] = self.truth
        out.update(self.static)
        return out

    def flush(self) -> None:
        """Rewrite the whole file through ``atomic.replace_file``: a fresh temporary file,
        fsync'd and read back (:func:`verify_results`) before it replaces the previous one.

        On any failure (a full disk above all) the previous file stays exactly as it was and
        :class:`~hbl_mpi.core.atomic.WriteFailed` is raised; the tables stay in memory, so a later
        flush may still succeed.
        """
        t0 = time.perf_counter()
        tables = self.tables()

        def write(tmp: str) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # PyTables performance warnings on object columns
                with pd.HDFStore(tmp, mode="w") as store:
                    for key, df in tables.items():
                        # PyTables' table format silently stores nothing for an empty frame (then
                        # the file has no `nodes` to hold the attributes): the fixed format does
                        store.put(key, _hdf_safe(df), format="table" if len(df) else "fixed")
                    attrs = store.get_storer("nodes").attrs  # JSON strings: nothing here is pickled
                    attrs.config_json = json.dumps(self.config, sort_keys=True, default=str)
                    attrs.versions_json = json.dumps(self.versions, sort_keys=True, default=str)
                    attrs.data_checksum = str(self.data_checksum)

        replace_file(self.path, write, verify=lambda tmp: verify_results(tmp, len(tables["nodes"])))
        self._dirty = False
        self._last_flush = time.monotonic()
        self._last_duration = time.perf_counter() - t0
        self.flush_time += self._last_duration
        self.flushes += 1
        self.saved_done = int((tables["nodes"]["status"] == "done").sum())


def write_failed_line(e, out_dir: str, writer: "ResultsWriter | None") -> str:
    """The one line a run ends with when a file in OUT could not be written (exit 4).

    ``e`` is an ``atomic.WriteFailed``: the file it names was left as it was, so the
    results file holds what its last good flush wrote (``writer.saved_done``).
    """
    results = results_path(out_dir)
    what = "disk full" if e.disk_full else f"cannot write ({type(e.cause).__name__}: {e.cause})"
    if writer is None:
        return f"{what} while writing {e.path}; no node has run yet; free space and run again"
    where = "it" if os.path.abspath(e.path) == os.path.abspath(results) else results
    return (f"{what} while writing {e.path}; {writer.saved_done} finished nodes are in {where}; "
            "free space and run --restart")


def verify_results(path: str, n_nodes: int) -> None:
    """Raise unless ``path`` reads back as a results file with ``n_nodes`` node rows.

    HDF5 writes on a full disk can "succeed" and leave a file without its ``nodes`` key:
    reading it back is the only proof that the new file may replace the old one.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pd.HDFStore(path, mode="r") as store:
            keys = {k.lstrip("/") for k in store.keys()}
            missing = {"nodes", "history", "cell_val"} - keys
            if missing:
                raise OSError(f"the new results file lacks {', '.join(sorted(missing))}")
            n = len(store["nodes"])
            if n != n_nodes:
                raise OSError(f"the new results file holds {n} node rows, not {n_nodes}")
            if "config_json" not in store.get_storer("nodes").attrs._v_attrnames:
                raise OSError("the new results file lacks its attributes")


def _hdf_safe(df: pd.DataFrame) -> pd.DataFrame:
    """PyTables 'table' format wants numpy object strings, not pandas' string dtypes."""
    out = df.copy()
    for c in out.columns:
        if not (pd.api.types.is_numeric_dtype(out[c]) or pd.api.types.is_bool_dtype(out[c])):
            out[c] = np.asarray(out[c].astype(str), dtype=object)
    return out


# --------------------------------------------------------------------------- node rows
# What one node contributes to the tables above, as plain data: a worker builds the
# payload, rank 0 turns it into rows (``lifecycle.Ledger``).
