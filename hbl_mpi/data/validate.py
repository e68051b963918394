"""The one validator of a normalised ``Dataset``: every reader and the writer pass through it.

A data set reaches hbl_mpi from two files (a CANDLE Uno HDF5 file, ``uno_h5.read_uno``,
and its normalised ``.npz`` cache, ``normalised.read_normalised``) and from the builders
(``data synth``/``gdsc``/``improve``, through ``uno_h5.write_uno``). Each of them ends in
:func:`validate_dataset`, so what one path refuses the others refuse with the same line:
a hand-edited or damaged cache can no longer merge two cells under one id, carry a
(cell, drug) pair twice with two labels, lack the cell features or feed NaN labels to
training (issue 28 item 5). The HDF5 reader checks some of these earlier, while it streams
(with the partition and row that is wrong); this pass is what both forms have in common.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hbl_mpi.core.errors import InputError
from hbl_mpi.data.dataset import CELL, DRUG, Dataset

VALUE_LIMIT = 1e18
"""Largest |value| of a label, dose or feature: training computes in float32, whose range
ends at 3.4e38, and a squared error of a value beyond 1e18 (or a product of features of
that size with weights) overflows it into inf/NaN losses. Beyond it: an error, exit 2."""
MAX_ID_LENGTH = 256
"""Longest cell or drug id, in characters. Real ids are short (``ACH-000001``,
``CCLE.22RV1``, ``NSC.757440``); every per-cell table of results.h5 stores ids in
fixed-width string columns sized by the longest, so one id of a million characters made a
1 GB results file for six nodes (issue 28 item 8)."""
SHOW = 3  # offending ids named in an error message


def first(ids, n: int = SHOW) -> str:
    """The first ``n`` of ``ids`` for an error message, with ``...`` when there are more."""
    ids = list(ids)
    s = ", ".join(str(i) for i in ids[:n])
    return s + (", ..." if len(ids) > n else "")


def validate_dataset(ds: Dataset, where: str) -> None:
    """InputError (one line starting with ``where``) unless ``ds`` is a usable data set.

    Checks: table lengths and index ranges; ids non-empty, unique and at most
    :data:`MAX_ID_LENGTH` long; at least one cell and one drug feature group of the right
    shape with finite values within :data:`VALUE_LIMIT`; labels (and doses) finite and
    within it; no (cell, drug[, dose]) key twice; truth naming known cells once each.
    """
    n = ds.n_rows
    for name in ("cell_index", "drug_index") + (("dose",) if ds.dose is not None else ()):
        a = np.asarray(getattr(ds, name))
        if a.ndim != 1 or len(a) != n:
            raise InputError(f"{where}: {name} has {len(a):,} rows, label has {n:,}")
    for ids, who in ((ds.cell_ids, "cell"), (ds.drug_ids, "drug")):
        _check_ids(ids, who, where)
    for idx, count, who in ((ds.cell_index, ds.n_cells, "cell"), (ds.drug_index, ds.n_drugs, "drug")):
        idx = np.asarray(idx)
        if n and not np.issubdtype(idx.dtype, np.integer):
            raise InputError(f"{where}: the {who} index is not integer (dtype {idx.dtype})")
        if n and (idx.min() < 0 or idx.max() >= count):
            raise InputError(f"{where}: a {who} index is outside 0..{count - 1}")
    _check_groups(ds, where)
    cells = np.asarray(ds.cell_ids, dtype=object)[np.asarray(ds.cell_index, dtype=np.int64)]
    drugs = np.asarray(ds.drug_ids, dtype=object)[np.asarray(ds.drug_index, dtype=np.int64)]
    check_values(ds.label, f"{ds.label_name} label(s)", where, cells, drugs)
    if ds.dose is not None:
        check_values(ds.dose, "dose value(s)", where, cells, drugs)
    keep, _ = duplicate_keys(where, np.asarray(ds.cell_index), np.asarray(ds.drug_index), ds.dose,
                             np.asarray(ds.label), ds.cell_ids, ds.drug_ids)
    if keep is not None:
        what = "(cell, drug, dose)" if ds.dose is not None else "(cell, drug)"
        raise InputError(f"{where}: {n - len(keep):,} response row(s) repeat a {what} key of an earlier row")
    if ds.truth is not None:
        check_truth(ds.truth, set(map(str, ds.cell_ids)), where)
    if ds.drug_truth is not None:
        check_truth(ds.drug_truth, set(map(str, ds.drug_ids)), where, who="drug")


def _check_ids(ids, who: str, where: str) -> None:
    s = pd.Series(np.asarray(ids, dtype=object))
    if s.isna().any():
        raise InputError(f"{where}: {int(s.isna().sum())} {who} id(s) are missing")
    s = s.astype(str)
    lengths = s.str.len().to_numpy()
    if len(s) and (lengths == 0).any():
        raise InputError(f"{where}: {int((lengths == 0).sum())} {who} id(s) are empty")
    long = np.flatnonzero(lengths > MAX_ID_LENGTH)
    if len(long):
        raise InputError(f"{where}: {len(long):,} {who} id(s) are longer than {MAX_ID_LENGTH} characters "
                         f"(longest: {int(lengths.max()):,}; first starts {s.iloc[long[0]][:40]!r})")
    dup = s[s.duplicated()]
    if len(dup):
        raise InputError(f"{where}: {len(dup):,} {who} id(s) appear more than once, which would merge "
                         f"different {who}s under one id (first: {first(dup.unique())})")


def _check_groups(ds: Dataset, where: str) -> None:
    for g in ds.groups:
        if g.entity not in (CELL, DRUG):
            raise InputError(f"{where}: feature group {g.name!r} has entity {g.entity!r}, expected cell or drug")
        rows = ds.n_cells if g.entity == CELL else ds.n_drugs
        values = np.asarray(g.values)
        if values.shape != (rows, len(g.columns)):
            raise InputError(f"{where}: feature group {g.name!r} has shape {values.shape}, "
                             f"expected ({rows}, {len(g.columns)})")
        if not np.issubdtype(values.dtype, np.number):
            raise InputError(f"{where}: feature group {g.name!r} is not numeric (dtype {values.dtype})")
        if not np.isfinite(values).all():
            raise InputError(f"{where}: feature group {g.name!r} has NaN/inf values")
        if values.size and np.abs(values).max() > VALUE_LIMIT:
            raise InputError(f"{where}: feature group {g.name!r} has value(s) beyond ±{VALUE_LIMIT:g}, which "
                             "overflow float32 training")
    for entity in (CELL, DRUG):
        if not ds.groups_of(entity):
            raise InputError(f"{where}: no {entity} feature group (a data set needs at least one cell and one "
                             f"drug feature group; has {[g.name for g in ds.groups] or 'none'})")


def check_values(v, what: str, where: str, cells, drugs) -> None:
    """InputError when ``v`` (a label or dose column) is not numeric, has NaN/inf, or has finite
    values beyond :data:`VALUE_LIMIT` (named as such: 1e308 is finite, not NaN/inf)."""
    v = np.asarray(v)
    if not np.issubdtype(v.dtype, np.number) or np.issubdtype(v.dtype, np.bool_):
        raise InputError(f"{where}: {what} are not numeric (dtype {v.dtype})")
    v = v.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(v))
    if len(bad):
        raise InputError(f"{where}: {len(bad):,} NaN/inf {what} (first: {first(f'{cells[i]}/{drugs[i]}' for i in bad)})")
    big = np.flatnonzero(np.abs(v) > VALUE_LIMIT)
    if len(big):
        raise InputError(f"{where}: {len(big):,} {what} beyond ±{VALUE_LIMIT:g}, which overflow float32 training "
                         f"(first: {first(f'{cells[i]}/{drugs[i]}={v[i]:.3g}' for i in big)})")


def duplicate_keys(where, cell, drug, dose, label, cell_ids, drug_ids):
    """Rows with the same (cell, drug[, dose]): identical labels are kept once, others are an error.

    Returns ``(keep, n_identical)``: ``keep`` the sorted rows to keep (None when no key
    repeats) and the number of identical repeats dropped.
    """
    keys = [drug, cell] if dose is None else [dose, drug, cell]
    order = np.lexsort(keys)
    same = (cell[order][1:] == cell[order][:-1]) & (drug[order][1:] == drug[order][:-1])
    if dose is not None:
        same &= dose[order][1:] == dose[order][:-1]
    if not same.any():
        return None, 0
    dup_later = order[1:][same]  # each row equal in key to its predecessor in sorted order
    dup_prev = order[:-1][same]
    differ = label[dup_later] != label[dup_prev]
    if differ.any():
        i = np.flatnonzero(differ)
        pairs = {(int(cell[dup_later[j]]), int(drug[dup_later[j]])) for j in i}
        j = i[0]
        a, b = dup_prev[j], dup_later[j]
        what = "(cell, drug, dose)" if dose is not None else "(cell, drug)"
        raise InputError(f"{where}: {len(pairs):,} {what} keys appear more than once with different labels "
                         f"(first: {cell_ids[cell[a]]}/{drug_ids[drug[a]]}: {label[a]:.6g} vs {label[b]:.6g})")
    # keep the first occurrence in file order within every run of equal keys
    run_start = np.r_[True, ~same]
    run_id = np.cumsum(run_start) - 1
    first_in_file = np.full(run_id[-1] + 1, np.iinfo(np.int64).max)
    np.minimum.at(first_in_file, run_id, order)
    keep = np.zeros(len(label), dtype=bool)
    keep[first_in_file] = True
    return np.flatnonzero(keep), int(len(label) - keep.sum())


def check_truth(t: pd.DataFrame, cells: set, where: str, who: str = "cell") -> None:
    """The planted-anomaly table names cells (``who = "drug"``: drugs) of the data, each once."""
    if not {who, "kind"} <= set(t.columns):
        raise InputError(f"{where}: the truth table needs columns {who}, kind (has {first(t.columns, 8)})")
    names = t[who].astype(str)
    unknown = sorted(set(names) - cells)
    if unknown:
        raise InputError(f"{where}: truth names {len(unknown)} {who}(s) not in the data (first: {first(unknown)})")
    dups = names[names.duplicated()].tolist()
    if dups:
        raise InputError(f"{where}: truth lists {len(dups)} {who}(s) twice (first: {first(dups)})")
