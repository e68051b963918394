"""The schema of ``OUT/results.h5``: every table, its columns, their dtypes, and which a
results file must have (docs/design.md §6).

One place for the rule: the writer casts every table to it and ``read_results`` checks a
file against it, so what one of them accepts the other does too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pandas as pd


Dtype = Literal["str", "int64", "float64", "float32", "bool"]


# ---------------------------------------------------------------------------
# the schema
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """One column: its dtype as written and whether a file may lack it.

    ``read_as`` is the dtype the reader gives it when that differs from the written one:
    the counts the analysis sums and averages read as float64, so that a gap in a
    hand-made or older file is NaN rather than an error (the writer casts them back).
    """

    name: str
    dtype: Dtype
    required: bool = False
    only_if_given: bool = False  # written only when some row carries it (adaptive runs' expanded_by)
    read_as: Dtype | None = None


@dataclass(frozen=True)
class Table:
    """One table of results.h5. A file may lack an optional table (``required=False``);
    a table may carry columns beyond its schema (they are read and kept as they are)."""

    name: str
    columns: tuple[Column, ...]
    required: bool = False

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def always_written(self) -> list[str]:
        """The columns every file has: the schema's, less the only-if-given ones."""
        return [c.name for c in self.columns if not c.only_if_given]

    def missing_columns(self, df: pd.DataFrame) -> list[str]:
        return [c.name for c in self.columns if c.required and c.name not in df.columns]

    def written(self, data) -> pd.DataFrame:
        """``data`` (records or a frame) as the writer stores it: exactly the schema's
        columns, cast to their dtypes; a missing number is NaN (floats) or -1 (ints), a
        missing flag False and a missing string ""."""
        given = set(data.columns) if isinstance(data, pd.DataFrame) else {k for r in data for k in r}
        cols = [c for c in self.columns if not c.only_if_given or c.name in given]
        df = pd.DataFrame(data, columns=[c.name for c in cols])
        for c in cols:
            df[c.name] = _cast(df[c.name], c.dtype, fill=True)
        return df

    def read(self, df: pd.DataFrame) -> pd.DataFrame:
        """A table as read from a file: the schema's columns cast to their read dtype; an
        optional column the file lacks is added as the writer fills a gap (NaN, -1, False,
        ""), so that no reader meets a KeyError on a file the reader accepted (issue 28 item 7)."""
        out = df.copy()
        for c in self.columns:
            if c.name in out.columns:
                out[c.name] = _cast(out[c.name], c.read_as or c.dtype, fill=False)
            elif not c.only_if_given:
                gap = pd.Series([None] * len(out), index=out.index, dtype=object)
                out[c.name] = _cast(gap, c.read_as or c.dtype, fill=True)
        return out


def _cast(s: pd.Series, dtype: Dtype, *, fill: bool) -> pd.Series:
    if dtype in ("float64", "float32"):
        return pd.to_numeric(s, errors="coerce").astype(dtype)
    if dtype == "int64":
        v = pd.to_numeric(s, errors="coerce")
        if fill:
            return v.fillna(-1).astype("int64")
        return v.astype("int64") if v.notna().all() else v.astype("float64")  # NaN = missing
    if dtype == "bool":
        return _filled(s, False).astype(bool)
    return _filled(s, "").astype(str).astype(object) if fill else s.astype(str)


def _filled(s: pd.Series, value) -> pd.Series:
    """``s`` with its gaps set to ``value`` (as objects: an all-NaN column is float64)."""
    return s.astype(object).where(s.notna(), value)

NODES = Table("nodes", (
    Column("node", "str", required=True),
    Column("parent", "str"),  # derived from the node's name when a file lacks it
    Column("stage", "int64", required=True),
    Column("status", "str", required=True),  # done | failed | skipped
    Column("group", "int64"),
    Column("start", "float64"),
    Column("stop", "float64"),
    Column("epochs_planned", "int64", read_as="float64"),
    Column("epochs_run", "int64", read_as="float64"),
    Column("stopped_early", "bool"),
    Column("train_loss", "float64"),
    Column("val_loss", "float64", required=True),  # the best epoch's; NaN for a failed node
    Column("val_loss_last", "float64"),
    Column("test_loss", "float64"),
    Column("n_train_rows", "int64", read_as="float64"),
    Column("n_val_rows", "int64"),
    Column("n_train_cells", "int64"),
    Column("n_val_cells", "int64"),
    Column("steps", "int64", read_as="float64"),
    Column("train_s", "float64"),
    Column("transfer_s", "float64"),
    Column("error", "str"),
    Column("best_epoch", "int64"),
    Column("start_checksum", "str"),
    Column("inherit_checksum", "str"),
    Column("source", "str"),
    Column("rank", "int64"),
    Column("resumed_from", "int64"),
    Column("expanded_by", "str", only_if_given=True),  # adaptive runs: why the node was created
), required=True)
"""One row per trained node (docs/design.md §6)."""

HISTORY = Table("history", (
    Column("node", "str", required=True), Column("epoch", "int64"), Column("loss", "float64"),
    Column("val_loss", "float64"), Column("seconds", "float64"),
), required=True)
"""One row per node and epoch."""

CELL_VAL = Table("cell_val", (
    Column("node", "str", required=True), Column("cell", "str", required=True), Column("n_rows", "int64"),
    Column("mse", "float64", required=True),
), required=True)
"""Each node's validation error per cell (its held-out cells)."""

CELL_TEST = Table("cell_test", CELL_VAL.columns)
"""Each node's error per cell on the common holdout rows (docs/design.md §6; older files lack it)."""

DRUG_VAL = Table("drug_val", (
    Column("node", "str", required=True), Column("drug", "str", required=True), Column("n_rows", "int64"),
    Column("mse", "float64", required=True),
))
"""``partition = "drugs"``: each node's validation error per held-out drug (the drugs' ``cell_val``;
such a run writes an empty ``cell_val``, which every file has)."""

DRUG_TEST = Table("drug_test", DRUG_VAL.columns)
"""``partition = "drugs"``: each node's error per drug on the common holdout rows (``cell_test``'s twin)."""

PLAN = Table("plan", (
    Column("node", "str", required=True), Column("parent", "str"), Column("stage", "int64"),
    Column("cell", "str", required=True), Column("role", "str", required=True),
))
"""The tree: which cells each node trains on and validates on (``role``)."""

TRUTH = Table("truth", (Column("cell", "str", required=True), Column("kind", "str", required=True)))
"""The planted anomalies, when the data has them (synthetic data). With planted drugs it
also has ``unit`` and ``drug`` columns (``dataset.combine_truth``); the reader splits it
into ``RunTables.truth`` (cells) and ``RunTables.drug_truth``."""

CELL_PRED = Table("cell_pred", (
    Column("node", "str", required=True), Column("cell", "str", required=True), Column("drug", "str", required=True),
    Column("pred", "float32", required=True), Column("label", "float32"),
))
"""Each node's prediction for every drug of each of its validation cells, beside the mean
measured validation label (NaN: not measured); the diagnosis reads it (``diagnosis.py``)."""

CELL_NEIGHBOURS = Table("cell_neighbours", (
    Column("cell", "str", required=True), Column("neighbour", "str", required=True), Column("rank", "int64"),
    Column("similarity", "float64"),
))
"""Each cell's nearest cells by expression, written once per run (``diagnosis.expression_neighbours``)."""

CELL_METADATA = Table("cell_metadata", (Column("cell", "str", required=True),))
"""What is known of each cell besides its data (tissue, growth, study...: ``data/metadata.py``), one string
column per field, "" = missing; written once per run when the data has it, read by the report."""

SCHEMA: dict[str, Table] = {t.name: t for t in (NODES, HISTORY, CELL_VAL, CELL_TEST, CELL_PRED, PLAN, TRUTH,
                                                 CELL_NEIGHBOURS, CELL_METADATA, DRUG_VAL, DRUG_TEST)}
"""Every table of results.h5 by name, in the order the writer writes them."""

PER_NODE_TABLES: tuple[str, ...] = ("cell_val", "cell_test", "cell_pred", "drug_val", "drug_test")
"""The per-(node, cell) tables a trained node reports besides its row and history: the
lifecycle, the writer and a restart carry each of them the same way (``node_tables``)."""
REQUIRED_PER_NODE = {name for name in PER_NODE_TABLES if SCHEMA[name].required}
