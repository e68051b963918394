"""Read and write the CANDLE Uno HDF5 ("Top21") format, normalising on the way in.

The file stores one feature row per *response* row: the real Top21 file repeats each
cell's 942 expression values and each drug's 5,270 descriptors once per response
(~13 GB of float32). ``read_uno`` streams every ``x_*`` table in row chunks
(``HDFStore.select(start=, stop=)``), keeps the first feature row it sees for each cell
and each drug and checks every later row of that entity against it, so memory stays at
the normalised size (~40 MB for Top21) plus one chunk. ``write_uno`` does the reverse,
chunk by chunk, into a temporary file that is renamed into place only when complete.

Everything a user can get wrong in a file (missing keys, row-count mismatches,
non-numeric or non-finite values, conflicting duplicates, a cell whose rows disagree)
becomes a one-line ``InputError`` naming the problem, the counts and the first ids.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hbl_mpi.data import metadata
from hbl_mpi.data.dataset import CELL, DRUG, Dataset, FeatureGroup, split_truth
from hbl_mpi.core.errors import InputError
from hbl_mpi.data.uno_format import (  # noqa: F401 (the format's names, read here too)
    CHUNK_BYTES, DEFAULT_INPUTS, DOSE_COLUMNS, FEATURE_NAMES_KEY, LABEL_RANGES, LABELS, PARTITIONS, _Store)
from hbl_mpi.data.validate import SHOW as _SHOW, VALUE_LIMIT, duplicate_keys, validate_dataset
from hbl_mpi.data.validate import first as _first


# ----------------------------------------------------------------------------- helpers


@dataclass
class _Input:
    """One ``x_*_k`` input: where its values go in the normalised form."""

    index: int
    type: str  # "cell.rnaseq", "drug.descriptors", ..., or "dose"
    entity: str | None  # CELL, DRUG, or None for the dose input

    @classmethod
    def parse(cls, index: int, type_: str, path: str) -> "_Input":
        t = str(type_)
        if t == "dose":
            return cls(index, t, None)
        head = t.split(".", 1)[0]
        if head == "cell" and "." in t:
            return cls(index, t, CELL)
        if head == "drug" and "." in t:
            return cls(index, t, DRUG)
        raise InputError(f"data file {path!r}: input x_*_{index} has type {t!r}; expected 'cell.<name>', "
                         "'drug.<name>' or 'dose'")


def _input_layout(store: _Store, n_inputs: int) -> tuple[list[_Input], dict]:
    """Which group each ``x_*_k`` feeds: from the ``model`` attrs, else the Top21 default."""
    path = store.path
    attrs = store.attrs("model") if "model" in store.keys else {}
    feats = attrs.get("input_features")
    if feats is not None:
        try:
            types = list(feats.values()) if hasattr(feats, "values") else list(feats)
        except Exception:
            raise InputError(f"data file {path!r}: model attribute input_features is not a mapping") from None
        if len(types) != n_inputs:
            raise InputError(f"data file {path!r}: model attribute input_features names {len(types)} inputs "
                             f"but the file has {n_inputs} (x_train_0..x_train_{n_inputs - 1})")
    else:
        if n_inputs > len(DEFAULT_INPUTS):
            raise InputError(f"data file {path!r} has {n_inputs} inputs x_*_0..x_*_{n_inputs - 1} but no `model` key "
                             f"naming them (without it at most {len(DEFAULT_INPUTS)}: {', '.join(DEFAULT_INPUTS)})")
        types = list(DEFAULT_INPUTS[:n_inputs])
    inputs = [_Input.parse(i, t, path) for i, t in enumerate(types)]
    seen: dict[str, int] = {}
    for inp in inputs:
        if inp.type in seen:
            raise InputError(f"data file {path!r}: inputs x_*_{seen[inp.type]} and x_*_{inp.index} both have type "
                             f"{inp.type!r} (drug combinations are not supported)")
        seen[inp.type] = inp.index
    if not any(i.entity == CELL for i in inputs) or not any(i.entity == DRUG for i in inputs):
        raise InputError(f"data file {path!r}: needs at least one cell input and one drug input, "
                         f"got {[i.type for i in inputs]}")
    return inputs, attrs


def _partitions(store: _Store) -> tuple[list[str], int]:
    """Partitions present and the number of inputs; every missing key is an error."""
    path, keys = store.path, store.keys
    present = [p for p in PARTITIONS if f"y_{p}" in keys or any(k.startswith(f"x_{p}_") for k in keys)]
    if not present:
        shown = _first(sorted(keys), 8) if keys else "none"
        raise InputError(f"data file {path!r} is not a CANDLE Uno file: no y_train/y_val/y_test keys (keys: {shown})")
    counts = {}
    for p in present:
        idx = sorted(int(k.rsplit("_", 1)[1]) for k in keys
                     if k.startswith(f"x_{p}_") and k.rsplit("_", 1)[1].isdigit())
        missing = [f"y_{p}"] if f"y_{p}" not in keys else []
        n = (max(idx) + 1) if idx else 0
        missing += [f"x_{p}_{i}" for i in range(max(n, 2)) if i not in idx]
        if missing:
            raise InputError(f"data file {path!r} is missing key(s) {', '.join(missing)}")
        counts[p] = n
    if len(set(counts.values())) > 1:
        raise InputError(f"data file {path!r}: partitions have different numbers of inputs "
                         + ", ".join(f"{p}: {n}" for p, n in counts.items()))
    return present, counts[present[0]]


def _numeric_values(df: pd.DataFrame, key: str, path: str) -> np.ndarray:
    bad = [c for c, t in df.dtypes.items() if not (pd.api.types.is_numeric_dtype(t) or pd.api.types.is_bool_dtype(t))]
    if bad:
        col = bad[0]
        raise InputError(f"data file {path!r}: key {key!r} has {len(bad)} non-numeric column(s) "
                         f"(first: {col!r}, dtype {df[col].dtype})")
    return np.ascontiguousarray(df.to_numpy(dtype=np.float32))


def _ids(y: pd.DataFrame, col: str, key: str, path: str) -> np.ndarray:
    s = y[col]
    if s.isna().any():
        rows = np.flatnonzero(s.isna().to_numpy())
        raise InputError(f"data file {path!r}: {key} column {col} has {len(rows)} missing id(s) (first rows: "
                         f"{_first(rows)})")
    if pd.api.types.is_float_dtype(s.dtype):
        v = s.to_numpy()
        if np.all(v == np.round(v)):  # ids written as numbers: 12.0 -> "12"
            s = s.astype(np.int64)
    out = s.astype(str).to_numpy(dtype=object)
    empty = np.flatnonzero(out == "")
    if len(empty):
        raise InputError(f"data file {path!r}: {key} column {col} has {len(empty)} empty id(s) (first rows: "
                         f"{_first(empty)})")
    return out


def _finite_column(y: pd.DataFrame, col: str, what: str, values: str, key: str, path: str, c, d) -> np.ndarray:
    """Column ``col`` of response table ``key`` as float64: numeric, finite, of a magnitude
    float32 training survives; InputError naming the first bad (cell/drug) otherwise."""
    if not pd.api.types.is_numeric_dtype(y[col].dtype) or pd.api.types.is_bool_dtype(y[col].dtype):
        raise InputError(f"data file {path!r}: {key} {what} is not numeric (dtype {y[col].dtype})")
    v = y[col].to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(v))
    if len(bad):
        raise InputError(f"data file {path!r}: {key} has {len(bad)} NaN/inf {values} (first: "
                         f"{_first(f'{c[i]}/{d[i]}' for i in bad)})")
    _check_magnitude(v, f"{key} column {col}", path, c, d)
    return v


def _check_magnitude(v: np.ndarray, where: str, path: str, cells, drugs) -> None:
    """InputError when finite values of a response column exceed :data:`VALUE_LIMIT`."""
    big = np.flatnonzero(np.abs(v) > VALUE_LIMIT)
    if len(big):
        raise InputError(f"data file {path!r}: {where} has {len(big):,} value(s) beyond ±{VALUE_LIMIT:g}, which "
                         f"overflow float32 training (first: {_first(f'{cells[i]}/{drugs[i]}={v[i]:.3g}' for i in big)})")


# ----------------------------------------------------------------------------- reading


@dataclass
class _Responses:
    cells: np.ndarray  # object (R,)
    drugs: np.ndarray  # object (R,)
    label: np.ndarray  # float32 (R,)
    dose: np.ndarray | None
    label_name: str
    offsets: dict  # partition -> (start, stop) in the merged rows
    notes: list  # warnings, printed once the whole file has been read without an error


def _read_responses(store: _Store, present: list[str]) -> _Responses:
    path = store.path
    cells, drugs, labels, doses, offsets, notes = [], [], [], [], {}, []
    label_name = None
    start = 0
    for p in present:
        key = f"y_{p}"
        y = store.select(key)
        cols = list(y.columns)
        for need in ("Sample", "Drug1"):
            if need not in cols:
                raise InputError(f"data file {path!r}: {key} has no column {need!r} (columns: {_first(cols, 8)})")
        lab = next((c for c in LABELS if c in cols), None)
        if lab is None:
            raise InputError(f"data file {path!r}: {key} has no label column AUC or Growth (columns: {_first(cols, 8)})")
        if label_name is None:
            label_name = lab
        elif lab != label_name:
            raise InputError(f"data file {path!r}: {key} has label {lab!r} but an earlier partition has {label_name!r}")
        if "Drug2" in cols:
            d2 = y["Drug2"]
            used = d2.notna() & (d2.astype(str).str.strip() != "") & (d2.astype(str) != "nan")
            if used.any():
                raise InputError(f"data file {path!r}: {key} has {int(used.sum())} rows with a Drug2 "
                                 "(drug combinations are not supported)")
        c = _ids(y, "Sample", key, path)
        d = _ids(y, "Drug1", key, path)
        v = _finite_column(y, lab, f"label column {lab}", f"{lab} label(s)", key, path, c, d)
        lo, hi = LABEL_RANGES[lab]
        outside = np.flatnonzero((v < lo) | (v > hi))
        if len(outside):
            notes.append(f"hbl_mpi: warning: data file {path!r}: {key} has {len(outside):,} {lab} label(s) "
                         f"outside [{lo:g}, {hi:g}] (first: {_first(f'{c[i]}/{d[i]}={v[i]:.6g}' for i in outside)}); "
                         "they are used as they are")
        dcol = next((x for x in DOSE_COLUMNS if x in cols), None)
        if dcol is not None:
            dv = _finite_column(y, dcol, f"column {dcol}", f"{dcol} value(s)", key, path, c, d)
            doses.append(dv.astype(np.float32))
        elif doses:
            raise InputError(f"data file {path!r}: {key} has no dose column but an earlier partition has one")
        cells.append(c)
        drugs.append(d)
        labels.append(v.astype(np.float32))
        offsets[p] = (start, start + len(y))
        start += len(y)
    if doses and len(doses) != len(present):
        raise InputError(f"data file {path!r}: only some partitions have a dose column")
    return _Responses(
        cells=np.concatenate(cells), drugs=np.concatenate(drugs), label=np.concatenate(labels),
        dose=np.concatenate(doses) if doses else None, label_name=label_name, offsets=offsets, notes=notes,
    )


class _EntityTable:
    """First-seen feature row per entity, and a check of every later row against it."""

    def __init__(self, n_entities: int, width: int):
        self.values = np.zeros((n_entities, width), dtype=np.float32)
        self.seen = np.zeros(n_entities, dtype=bool)
        self.conflicts: set[int] = set()
        self.conflict_rows = 0

    def absorb(self, ent: np.ndarray, v: np.ndarray) -> None:
        new = ~self.seen[ent]
        if new.any():
            rows = np.flatnonzero(new)
            u, first = np.unique(ent[rows], return_index=True)
            self.values[u] = v[rows[first]]
            self.seen[u] = True
        differ = np.flatnonzero((v != self.values[ent]).any(axis=1))
        if len(differ):
            self.conflict_rows += len(differ)
            self.conflicts.update(int(e) for e in np.unique(ent[differ]))


def _feature_names(store: _Store, inputs: list[_Input], columns: dict[int, list], widths: dict[int, int]) -> dict:
    """Column names per input: the side table, else the x table's own names, else positions."""
    path = store.path
    side = None
    if FEATURE_NAMES_KEY in store.keys:
        side = store.select(FEATURE_NAMES_KEY)
        if not {"group", "name"} <= set(side.columns):
            raise InputError(f"data file {path!r}: key {FEATURE_NAMES_KEY!r} needs columns group, name")
    out = {}
    for inp in inputs:
        if inp.entity is None:
            continue
        w = widths[inp.index]
        if side is not None and (side["group"] == inp.type).any():
            names = side.loc[side["group"] == inp.type, "name"].astype(str).tolist()
            if len(names) != w:
                raise InputError(f"data file {path!r}: {FEATURE_NAMES_KEY} lists {len(names)} names for {inp.type} "
                                 f"but x_*_{inp.index} has {w} columns")
        else:
            names = [str(c) for c in columns[inp.index]]
            if any(n == "" for n in names) or len(set(names)) != len(names):
                names = [f"{inp.type}[{i}]" for i in range(w)]
        out[inp.index] = names
    return out


def read_uno(path: str, *, chunk_bytes: int = CHUNK_BYTES) -> Dataset:
    """Read a CANDLE Uno HDF5 file, merge its partitions and normalise it (docs/design.md §2.1).

    Streams each ``x_*`` table in chunks of about ``chunk_bytes``; peak memory is the
    normalised tables, the response table and a few chunks. Cells and drugs are indexed
    in sorted id order; response rows keep the file order (train, val, test) with
    identical duplicate rows kept once (counted in ``meta["identical_duplicates"]``).
    """
    path = os.fspath(path)
    store = _Store(path)
    try:
        return _read(store, chunk_bytes)
    finally:
        store.close()


def _read(store: _Store, chunk_bytes: int) -> Dataset:
    path = store.path
    present, n_inputs = _partitions(store)
    inputs, model_attrs = _input_layout(store, n_inputs)
    resp = _read_responses(store, present)
    n_rows = len(resp.label)

    for p in present:
        ny = resp.offsets[p][1] - resp.offsets[p][0]
        for inp in inputs:
            key = f"x_{p}_{inp.index}"
            nx = store.nrows(key)
            if nx != ny:
                raise InputError(f"data file {path!r}: {key} has {nx:,} rows but y_{p} has {ny:,}")

    cell_codes, cell_ids = pd.factorize(resp.cells, sort=True)
    drug_codes, drug_ids = pd.factorize(resp.drugs, sort=True)
    cell_ids = np.asarray(cell_ids, dtype=object)
    drug_ids = np.asarray(drug_ids, dtype=object)
    codes = {CELL: cell_codes.astype(np.int32), DRUG: drug_codes.astype(np.int32)}
    ids = {CELL: cell_ids, DRUG: drug_ids}

    tables: dict[int, _EntityTable] = {}
    columns: dict[int, list] = {}
    widths: dict[int, int] = {}
    dose = resp.dose
    for inp in inputs:
        x_dose = np.empty(n_rows, dtype=np.float32) if inp.entity is None else None
        nonfinite_rows, nonfinite_first = 0, []
        for p in present:
            key = f"x_{p}_{inp.index}"
            lo, hi = resp.offsets[p]
            n = hi - lo
            first = store.select(key, start=0, stop=min(n, 1))
            w = first.shape[1]
            if inp.index not in widths:
                widths[inp.index] = w
                columns[inp.index] = list(first.columns)
                if w == 0:
                    raise InputError(f"data file {path!r}: {key} has no columns")
                if inp.entity is None and w != 1:
                    raise InputError(f"data file {path!r}: dose input {key} has {w} columns, expected 1")
                if inp.entity is not None:
                    tables[inp.index] = _EntityTable(len(ids[inp.entity]), w)
            elif w != widths[inp.index]:
                raise InputError(f"data file {path!r}: {key} has {w} columns but x_{present[0]}_{inp.index} has "
                                 f"{widths[inp.index]}")
            step = max(1, chunk_bytes // (4 * w))
            for s in range(0, n, step):
                e = min(n, s + step)
                v = _numeric_values(store.select(key, start=s, stop=e), key, path)
                if v.shape[1] != w:
                    raise InputError(f"data file {path!r}: {key} rows {s}:{e} have {v.shape[1]} columns, not {w}")
                fin = np.isfinite(v).all(axis=1)
                if not fin.all():
                    bad = np.flatnonzero(~fin)
                    nonfinite_rows += len(bad)
                    for b in bad[: _SHOW - len(nonfinite_first)]:
                        r = lo + s + b
                        nonfinite_first.append(f"{key} row {s + b} ({resp.cells[r]}/{resp.drugs[r]})")
                    continue
                big = np.abs(v) > VALUE_LIMIT
                if big.any():
                    col = int(np.flatnonzero(big.any(axis=0))[0])
                    name = str(columns[inp.index][col]) or f"#{col}"
                    raise InputError(f"data file {path!r}: {key} has {int(big.sum()):,} feature value(s) beyond "
                                     f"±{VALUE_LIMIT:g} in rows {s}:{e}, which overflow float32 training "
                                     f"(first column: {name!r})")
                if inp.entity is None:
                    x_dose[lo + s:lo + e] = v[:, 0]
                else:
                    tables[inp.index].absorb(codes[inp.entity][lo + s:lo + e], v)
        if nonfinite_rows:
            raise InputError(f"data file {path!r}: input x_*_{inp.index} ({inp.type}) has {nonfinite_rows:,} row(s) "
                             f"with NaN/inf features, or values beyond float32's range (first: {_first(nonfinite_first)})")
        if inp.entity is None:
            if dose is not None and not np.array_equal(dose, x_dose):
                raise InputError(f"data file {path!r}: the dose input x_*_{inp.index} disagrees with the y dose column")
            dose = x_dose
        else:
            t = tables[inp.index]
            if t.conflicts:
                who = "cells" if inp.entity == CELL else "drugs"
                bad_ids = [ids[inp.entity][i] for i in sorted(t.conflicts)]
                raise InputError(f"data file {path!r}: {len(bad_ids):,} {who} have differing {inp.type} feature rows "
                                 f"({t.conflict_rows:,} rows differ from the entity's first row; first: "
                                 f"{_first(bad_ids)})")

    names = _feature_names(store, inputs, columns, widths)
    groups = []
    for entity in (CELL, DRUG):
        for inp in inputs:
            if inp.entity == entity:
                groups.append(FeatureGroup(inp.type, entity, names[inp.index], tables[inp.index].values))

    keep, n_identical = duplicate_keys(f"data file {path!r}", codes[CELL], codes[DRUG], dose, resp.label, cell_ids,
                                       drug_ids)

    truth, drug_truth = _read_truth(store) if "truth" in store.keys else (None, None)
    cell_meta = None
    if metadata.KEY in store.keys:  # checked like a user's CSV: a hand-made file gets the same one-line errors
        cell_meta = metadata.read_hdf_table(store.select(metadata.KEY), cell_ids, f"data file {path!r}: key {metadata.KEY!r}")
    source = str(model_attrs.get("hbl_source", "") or f"uno:{os.path.basename(path)}")
    meta = {"path": path, "partition_rows": {p: b - a for p, (a, b) in resp.offsets.items()},
            "identical_duplicates": n_identical}
    if model_attrs.get("hbl_meta"):
        try:
            meta["written"] = json.loads(model_attrs["hbl_meta"])
        except (TypeError, ValueError):
            pass
    sel = (lambda a: a) if keep is None else (lambda a: a[keep])
    for line in resp.notes:
        print(line, file=sys.stderr, flush=True)
    ds = Dataset(
        cell_ids=cell_ids, drug_ids=drug_ids, groups=groups,
        cell_index=sel(codes[CELL]), drug_index=sel(codes[DRUG]), label=sel(resp.label),
        dose=None if dose is None else sel(dose), label_name=resp.label_name, truth=truth,
        source=source, meta=meta, cell_metadata=cell_meta, drug_truth=drug_truth,
    )
    validate_dataset(ds, f"data file {path!r}")  # the checks the .npz reader makes too
    return ds


def _read_truth(store: _Store) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """The planted anomalies as strings: (cells: cell, kind; drugs: drug, kind), the drugs'
    rows marked by a ``unit`` column (``dataset.combine_truth``); ``validate_dataset`` checks them."""
    t = store.select("truth")
    if not {"cell", "kind"} <= set(t.columns):
        raise InputError(f"data file {store.path!r}: key 'truth' needs columns cell, kind (has {_first(t.columns, 8)})")
    if "unit" in t.columns and ("drug" not in t.columns or not set(t["unit"].astype(str)) <= {CELL, DRUG}):
        raise InputError(f"data file {store.path!r}: key 'truth' has a unit column, so it needs a drug column and "
                         f"units cell or drug (has units {_first(sorted(set(t['unit'].astype(str))))})")
    cells, drugs = split_truth(t)
    return tuple(None if part is None else pd.DataFrame({c: part[c].astype(str).to_numpy(dtype=object)
                                                         for c in part.columns})
                 for part in (cells, drugs))


# ----------------------------------------------------------------------------- writing


def read_uno_responses(path: str) -> pd.DataFrame:
    """Only the response table of a Uno file: columns cell, drug, label (and dose when present).

    For a second screen used as a reference (``report --reference``): its features are not
    needed, and reading them (one row per response) costs minutes for GDSC-sized files.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"data file {path!r} does not exist")
    store = _Store(path)
    try:
        present, _ = _partitions(store)
        resp = _read_responses(store, present)
    finally:
        store.close()
    out = pd.DataFrame({"cell": resp.cells.astype(str), "drug": resp.drugs.astype(str),
                        "label": resp.label.astype(np.float64)})
    if resp.dose is not None:
        out["dose"] = resp.dose
    out.attrs["label_name"] = resp.label_name
    return out
