"""Cell metadata: what is known about each cell line besides its measurements (tissue, growth, study...).

A curator acts on groups (re-normalise a study, model a lineage apart, drop a site), so the
report must be able to say which group its suspects share (issue 30). The metadata is a
table with a ``cell`` column and any other columns, one row per cell; it travels with the
data: the Uno HDF5 file holds it under its own key (:data:`KEY`, a pandas table of
strings), the normalised ``.npz`` form in its JSON header, a run copies it into
``results.h5`` (table ``cell_metadata``) and the report reads it from there.

In memory every value is a string and a missing value is ``""`` (one representation in
the HDF5 table, the npz header and the CSV alike). Validation against the data's cells
(:func:`check_metadata`) refuses, with one line each: a cell the data does not have, a
cell listed twice, a column with no value for any cell; cells of the data without a row
are counted and kept (their values are ``""``).

Sources besides a user's CSV: ``data gdsc`` fills it from gdsctools' ``cosmic_info.csv.gz``
(:func:`cosmic_metadata`), read as a file and never imported; ``data improve`` from the
study prefix of a multi-study file (:func:`study_column`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import numpy as np
import pandas as pd

from hbl_mpi.core.errors import InputError

KEY = "cell_metadata"
"""The key of the table in a Uno HDF5 file (and in results.h5)."""
COSMIC_FILE = os.path.join("data", "cosmic_info.csv.gz")
COSMIC_COLUMNS = {"GDSC1": "gdsc_tissue", "GDSC2": "gdsc_subtype", "TCGA": "tcga", "MMR": "msi",
                  "SCREEN_MEDIUM": "screen_medium", "GROWTH_PROPERTIES": "growth_properties", "COSMIC_ID": "cosmic_id"}
"""cosmic_info.csv.gz's columns kept by ``data gdsc`` and the names they get (the omics
availability flags SEQUENCING..DRUG_SCREENING are left out: they say what GDSC measured,
not what the line is)."""
_SHOW = 3


def _first(ids) -> str:
    ids = [str(i) for i in ids]
    return ", ".join(ids[:_SHOW]) + (", ..." if len(ids) > _SHOW else "")


def normalise_table(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """``df`` as the one in-memory form: a ``cell`` column first, every value a string, ``""`` missing.

    InputError when it has no ``cell`` column, no other column, a blank or repeated column
    name, a missing cell id, or a cell listed twice."""
    if "cell" not in df.columns:
        raise InputError(f"{where}: no 'cell' column (columns: {_first(df.columns)})")
    names = [str(c) for c in df.columns]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"{where}: column(s) named twice: {_first(dup)}")
    others = [c for c in df.columns if c != "cell"]
    if not others:
        raise InputError(f"{where}: no column besides 'cell'")
    blank = [i for i, c in enumerate(names) if not c.strip() or c.startswith("Unnamed: ")]
    if blank:
        raise InputError(f"{where}: column {blank[0] + 1} has no name")
    out = pd.DataFrame({str(c): _strings(df[c]) for c in ["cell"] + others})
    empty_id = np.flatnonzero(out["cell"].to_numpy() == "")
    if len(empty_id):
        raise InputError(f"{where}: {len(empty_id)} row(s) with no cell id (first rows: {_first(empty_id + 1)})")
    dups = out["cell"][out["cell"].duplicated()].unique()
    if len(dups):
        raise InputError(f"{where}: {len(dups)} duplicated cell(s) (first: {_first(dups)})")
    return out.reset_index(drop=True)


def _strings(s: pd.Series) -> pd.Series:
    """Values as strings; NaN/None become ""; integral floats lose their ``.0`` (ids read as numbers)."""
    if pd.api.types.is_float_dtype(s.dtype):
        v = s.to_numpy(dtype=np.float64)
        fin = np.isfinite(v)
        if fin.any() and np.all(v[fin] == np.round(v[fin])):
            return pd.Series([str(int(x)) if np.isfinite(x) else "" for x in v], index=s.index, dtype=object)
    return s.astype(object).where(s.notna(), "").astype(str).str.strip().astype(object)


def read_metadata_csv(path: str) -> pd.DataFrame:
    """A user's metadata CSV (``cell`` + any columns), normalised; InputError when unreadable or malformed."""
    where = f"cell metadata {path!r}"
    if not os.path.isfile(path):
        raise InputError(f"{where} does not exist")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise InputError(f"{where} cannot be read as CSV ({type(e).__name__}: {str(e).strip().splitlines()[0]})") \
            from None
    return normalise_table(df, where)


@dataclasses.dataclass(frozen=True)
class Attached:
    """What attaching metadata to a data set found: cells with and without a row."""

    columns: list[str]
    cells: int
    with_metadata: int

    @property
    def without(self) -> int:
        return self.cells - self.with_metadata

    def line(self) -> str:
        return (f"cell metadata: {len(self.columns)} column(s) ({', '.join(self.columns)}) for "
                f"{self.with_metadata:,} of {self.cells:,} cells; {self.without:,} cell(s) have none (kept)")


def check_metadata(meta: pd.DataFrame, cell_ids, where: str) -> tuple[pd.DataFrame, Attached]:
    """``meta`` against the data's cells: InputError for an unknown cell, a duplicated cell or an
    empty column; returns the table (rows in the data's cell order) and the counts."""
    meta = normalise_table(meta, where)
    ids = pd.Index(np.asarray(cell_ids).astype(str))
    unknown = meta.loc[~meta["cell"].isin(ids), "cell"].tolist()
    if unknown:
        raise InputError(f"{where}: {len(unknown)} cell(s) not in the data (first: {_first(unknown)})")
    empty = [c for c in meta.columns if c != "cell" and (meta[c] == "").all()]
    if empty:
        raise InputError(f"{where}: column {empty[0]!r} is empty (no value for any cell)")
    meta = meta.iloc[np.argsort(ids.get_indexer(meta["cell"]), kind="stable")].reset_index(drop=True)
    return meta, Attached([c for c in meta.columns if c != "cell"], len(ids), len(meta))


def attach(ds, meta: pd.DataFrame, where: str):
    """``(dataset with cell_metadata = meta, Attached)``: the features, and so the checksum, are unchanged."""
    meta, info = check_metadata(meta, ds.cell_ids, where)
    return dataclasses.replace(ds, cell_metadata=meta), info


# ----------------------------------------------------------------------------- storage forms


def to_records(meta: pd.DataFrame) -> dict:
    """The JSON form (the normalised npz header): column -> list of strings."""
    return {str(c): meta[c].astype(str).tolist() for c in meta.columns}


def from_records(rec: dict | None, where: str) -> pd.DataFrame | None:
    if rec is None:
        return None
    return normalise_table(pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in rec.items()}), where)


def write_hdf(store, meta: pd.DataFrame) -> None:
    """Put ``meta`` into an open ``pd.HDFStore`` under :data:`KEY` (strings, ``""`` missing)."""
    df = pd.DataFrame({c: meta[c].astype(str).to_numpy(dtype=object) for c in meta.columns})
    store.put(KEY, df, format="table")


def read_hdf_table(df: pd.DataFrame, cell_ids, where: str) -> pd.DataFrame:
    """The ``cell_metadata`` table read from a file, checked against its cells like a CSV."""
    return check_metadata(df, cell_ids, where)[0]


# ----------------------------------------------------------------------------- sources


def study_column(cell_ids, studies) -> pd.DataFrame | None:
    """``cell`` -> ``study`` for source-prefixed cell ids (``CCLE.ACH-000001``): None for one study."""
    studies = [str(s) for s in studies]
    if len(studies) < 2:
        return None
    ids = [str(c) for c in cell_ids]
    study = [next((s for s in studies if c.startswith(s + ".")), "") for c in ids]
    return pd.DataFrame({"cell": ids, "study": study})


def cosmic_path() -> str | None:
    """gdsctools' ``data/cosmic_info.csv.gz`` when gdsctools is installed (found, never imported)."""
    try:
        spec = importlib.util.find_spec("gdsctools")
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        p = os.path.join(loc, COSMIC_FILE)
        if os.path.isfile(p):
            return p
    return None


def cosmic_metadata(cell_ids, path: str, *, prefixes=()) -> tuple[pd.DataFrame, dict]:
    """cosmic_info rows for the data's cells, matched by the upper-case alphanumerics of the
    name (``data gdsc``'s cell rule); a key two cosmic names share is left unmatched.

    ``prefixes``: source prefixes of the ids (``GDSC2.``), stripped before matching and kept
    as a ``study`` column. Returns the table (``cell`` + :data:`COSMIC_COLUMNS` values) and
    counts: matched, unmatched, ambiguous."""
    from hbl_mpi.data.gdsc import normalize_name

    try:
        cos = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise InputError(f"cosmic_info {path!r} cannot be read ({type(e).__name__}: {e})") from None
    if "SAMPLE_NAME" not in cos.columns:
        raise InputError(f"cosmic_info {path!r} has no SAMPLE_NAME column")
    keep = [c for c in COSMIC_COLUMNS if c in cos.columns]
    keys = cos["SAMPLE_NAME"].map(normalize_name)
    shared = set(keys[keys.duplicated()])
    by_key = {k: i for i, k in enumerate(keys) if k not in shared}
    rows, ambiguous, matched = [], 0, 0
    for c in (str(x) for x in cell_ids):
        pre = next((p for p in prefixes if c.startswith(p + ".")), "")
        k = normalize_name(c[len(pre) + 1:] if pre else c)
        ambiguous += k in shared
        i = by_key.get(k)
        if i is None and not prefixes:
            continue
        r = {"cell": c, "study": pre} if prefixes else {"cell": c}
        if i is not None:
            matched += 1
            r.update({COSMIC_COLUMNS[col]: cos.iloc[i][col] for col in keep})
        rows.append(r)
    cols = ["cell"] + (["study"] if prefixes else []) + [COSMIC_COLUMNS[c] for c in keep]
    table = normalise_table(pd.DataFrame(rows, columns=cols), f"cosmic_info {path!r}")
    table = table[[c for c in table.columns if c == "cell" or (table[c] != "").any()]]
    n = len(list(cell_ids))
    return table, {"matched": matched, "unmatched": n - matched, "ambiguous": int(ambiguous)}
