"""Write the CANDLE Uno HDF5 ("Top21") format: one feature row per response row, streamed
chunk by chunk into a temporary file that is read back and renamed into place only when
complete (``core.atomic``), so a crash or a full disk never leaves a half-written data file.
The reader and the format's keys are ``uno_h5.py``."""

from __future__ import annotations

import json
import os
import pickle
import warnings
from collections import OrderedDict

import numpy as np
import pandas as pd

from hbl_mpi.core.atomic import replace_file
from hbl_mpi.core.errors import InputError
from hbl_mpi.core.seeding import generator
from hbl_mpi.data import metadata
from hbl_mpi.data.uno_format import CHUNK_BYTES, FEATURE_NAMES_KEY, LABELS, PARTITIONS, _MAX_NAME_PICKLE
from hbl_mpi.data.validate import validate_dataset
from hbl_mpi.data.dataset import CELL, DRUG, Dataset, FeatureGroup, combine_truth


def _split(n_rows: int, seed: int, fractions) -> dict[str, np.ndarray]:
    try:
        f = [float(x) for x in fractions]
    except (TypeError, ValueError):
        raise InputError(f"fractions {fractions!r}: expected three numbers (train, val, test)") from None
    if len(f) != 3 or min(f) < 0 or abs(sum(f) - 1.0) > 1e-6 or f[0] <= 0:
        raise InputError(f"fractions {fractions!r}: expected three non-negative numbers summing to 1, train > 0")
    perm = generator(seed).permutation(n_rows)
    n_train = int(round(f[0] * n_rows))
    n_val = int(round(f[1] * n_rows))
    n_train = max(1, min(n_train, n_rows))
    n_val = min(n_val, n_rows - n_train)
    cuts = {"train": perm[:n_train], "val": perm[n_train:n_train + n_val], "test": perm[n_train + n_val:]}
    return {p: np.sort(r) for p, r in cuts.items()}


def _x_columns(g: FeatureGroup) -> list[str]:
    """The group's own names when they fit in a node attribute, else blanks (as Top21)."""
    names = [str(c) for c in g.columns]
    if len(pickle.dumps(names)) <= _MAX_NAME_PICKLE:
        return names
    return [""] * len(names)


def write_uno(ds: Dataset, path: str, *, seed: int = 0, fractions=(0.8, 0.1, 0.1),
              chunk_bytes: int = CHUNK_BYTES) -> None:
    """Write ``ds`` in the Uno HDF5 format (docs/design.md §2.1), rows split train/val/test by ``seed``.

    One ``x_<part>_<k>`` table per feature group (cell groups first), ``y_<part>`` with
    the label, ``Sample``, ``Drug1`` (and ``dose``), the ``model`` key with CANDLE's
    ``input_features``/``feature_shapes`` attributes, ``truth`` when the data has it and a
    ``feature_names`` side table. Rows are written in chunks to a temporary file in the
    target directory, renamed onto ``path`` only once the file is complete.
    """
    path = os.fspath(path)
    _check_dataset(ds)
    target_dir = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(target_dir):
        raise InputError(f"output directory {target_dir!r} does not exist")
    if os.path.isdir(path):
        raise InputError(f"output path {path!r} is a directory")
    parts = _split(ds.n_rows, seed, fractions)
    groups = ds.groups_of(CELL) + ds.groups_of(DRUG)
    replace_file(path, lambda tmp: _write(ds, tmp, parts, groups, seed, fractions, chunk_bytes),
                 verify=lambda tmp: _verify_written(tmp, ds.n_rows))


def _verify_written(tmp: str, n_rows: int) -> None:
    """The new file reads back with every response row (a full disk can leave HDF5 short)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pd.HDFStore(tmp, mode="r") as store:
            n = sum(store.get_storer(f"y_{p}").nrows for p in PARTITIONS if f"/y_{p}" in store.keys())
    if n != n_rows:
        raise OSError(f"the new data file holds {n} response rows, not {n_rows}")


def _write(ds, tmp, parts, groups, seed, fractions, chunk_bytes) -> None:
    cell_ids = np.asarray(ds.cell_ids, dtype=object).astype(str).astype(object)
    drug_ids = np.asarray(ds.drug_ids, dtype=object).astype(str).astype(object)
    itemsize = {"Sample": max(1, max(len(s) for s in cell_ids)), "Drug1": max(1, max(len(s) for s in drug_ids))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PerformanceWarning about object columns / wide tables
        with pd.HDFStore(tmp, mode="w") as store:
            for p in PARTITIONS:
                rows = parts[p]
                if len(rows) == 0:
                    continue  # an empty partition has no keys at all (the reader accepts that)
                for k, g in enumerate(groups):
                    ent = ds.cell_index if g.entity == CELL else ds.drug_index
                    cols = _x_columns(g)
                    step = max(1, chunk_bytes // (4 * g.width))
                    for s in range(0, len(rows), step):
                        r = rows[s:s + step]
                        df = pd.DataFrame(g.values[ent[r]], columns=cols, index=np.arange(s, s + len(r)), copy=False)
                        store.append(f"x_{p}_{k}", df, format="table", index=False)
                y = {ds.label_name: ds.label[rows].astype(np.float32),
                     "Sample": cell_ids[ds.cell_index[rows]], "Drug1": drug_ids[ds.drug_index[rows]]}
                if ds.dose is not None:
                    y["dose"] = ds.dose[rows].astype(np.float32)
                ydf = pd.DataFrame(y, index=np.arange(len(rows)))
                for c in ("Sample", "Drug1"):
                    ydf[c] = ydf[c].astype(object)
                store.append(f"y_{p}", ydf, format="table", data_columns=True, min_itemsize=itemsize, index=False)
            names = pd.DataFrame({
                "group": np.concatenate([[g.name] * g.width for g in groups]).astype(object),
                "name": np.concatenate([[str(c) for c in g.columns] for g in groups]).astype(object),
            })
            store.put(FEATURE_NAMES_KEY, names, format="table")
            store.put("model", pd.DataFrame())
            attrs = store.get_storer("model").attrs
            feats = OrderedDict()
            for g in groups:
                kind = g.name.split(".", 1)[1]
                feats[g.name if g.entity == CELL else f"drug1.{kind}"] = g.name
            attrs.input_features = feats
            attrs.feature_shapes = {g.name: (g.width,) for g in groups}
            attrs.hbl_source = str(ds.source or "")
            meta = json.dumps({"seed": seed, "fractions": list(map(float, fractions)), "source": ds.source,
                               "meta": ds.meta}, default=str, sort_keys=True)
            if len(meta) <= 30_000:
                attrs.hbl_meta = meta
            if ds.truth is not None and ds.drug_truth is None:
                t = pd.DataFrame({"cell": ds.truth["cell"].astype(str).to_numpy(dtype=object),
                                  "kind": ds.truth["kind"].astype(str).to_numpy(dtype=object)})
                store.put("truth", t, format="table")
            elif ds.drug_truth is not None:  # planted drugs: the table says each row's unit
                store.put("truth", combine_truth(ds.truth, ds.drug_truth), format="table")
            if ds.cell_metadata is not None:
                metadata.write_hdf(store, ds.cell_metadata)

def _check_dataset(ds: Dataset) -> None:
    """What the Uno format needs beyond ``validate_dataset`` (the readers' one validator)."""
    if ds.n_rows == 0:
        raise InputError("cannot write a data set with no response rows")
    for g in ds.groups:
        if g.entity not in (CELL, DRUG) or not g.name.startswith(g.entity + "."):
            raise InputError(f"feature group {g.name!r} ({g.entity}): names must be '<cell|drug>.<kind>'")
        if len(set(g.columns)) != len(g.columns):
            raise InputError(f"feature group {g.name!r}: column names are not unique")
    validate_dataset(ds, "cannot write the data set")
    if ds.label_name not in LABELS:
        raise InputError(f"label name {ds.label_name!r}: expected one of {LABELS}")
