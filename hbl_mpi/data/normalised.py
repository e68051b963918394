"""The normalised data set as one file: a cache of what ``read_uno`` computes.

Reading a Uno HDF5 file means streaming every duplicated feature row (Top21: 13 GB) to
keep one row per cell and per drug (~40 MB). ``data normalise IN.h5 --out F.npz`` does
that once per data set and writes the result here; a run (or any command taking a data
file) given ``F.npz`` then reads only the normalised tables. The file is an uncompressed
``.npz`` (plain arrays, loaded without pickle) plus one JSON header with what is not an
array (group names and columns, label name, truth, source). The ``Dataset`` read back is
equal to the one the HDF5 file gives (same ``checksum``), so runs, restarts and their
fingerprints do not care which of the two files they were given.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd

from hbl_mpi.core.atomic import replace_file
from hbl_mpi.data import metadata
from hbl_mpi.data.dataset import Dataset, FeatureGroup
from hbl_mpi.core.errors import InputError
from hbl_mpi.data.validate import validate_dataset

FORMAT = "hbl_mpi.normalised/1"


def is_normalised_file(path: str) -> bool:
    """Whether ``path`` is a zip (``.npz``) file: the normalised form, not HDF5."""
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def write_normalised(ds: Dataset, path: str) -> None:
    """Write ``ds`` to ``path`` atomically (a reader never sees half a file)."""
    header = {
        "format": FORMAT, "label_name": ds.label_name, "source": ds.source,
        "groups": [{"name": g.name, "entity": g.entity, "columns": [str(c) for c in g.columns]} for g in ds.groups],
        "truth": None if ds.truth is None else {c: ds.truth[c].astype(str).tolist() for c in ds.truth.columns},
        "meta": json.loads(json.dumps(ds.meta, default=str)),
        "cell_metadata": None if ds.cell_metadata is None else metadata.to_records(ds.cell_metadata),
    }
    if ds.drug_truth is not None:  # only then: files without planted drugs stay what they were
        header["drug_truth"] = {c: ds.drug_truth[c].astype(str).tolist() for c in ds.drug_truth.columns}
    arrays = {"header": np.array(json.dumps(header)),
              "cell_ids": np.asarray(ds.cell_ids, dtype=str), "drug_ids": np.asarray(ds.drug_ids, dtype=str),
              "cell_index": ds.cell_index, "drug_index": ds.drug_index, "label": ds.label}
    if ds.dose is not None:
        arrays["dose"] = ds.dose
    for i, g in enumerate(ds.groups):
        arrays[f"group{i}"] = np.ascontiguousarray(g.values, dtype=np.float32)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    replace_file(path, write)


def read_normalised(path: str) -> Dataset:
    """The ``Dataset`` in a file written by ``write_normalised``; InputError if it is not one."""
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            need = {"header", "cell_ids", "drug_ids", "cell_index", "drug_index", "label"}
            if not need <= files:
                raise InputError(f"data file {path!r} is a zip/npz file but not a normalised data set "
                                 f"(missing {', '.join(sorted(need - files))})")
            header = json.loads(str(z["header"]))
            if header.get("format") != FORMAT:
                raise InputError(f"data file {path!r}: normalised format {header.get('format')!r}, expected {FORMAT!r}")
            groups = []
            for i, g in enumerate(header["groups"]):
                if f"group{i}" not in files:
                    raise InputError(f"data file {path!r} is missing the values of feature group {g['name']!r}")
                groups.append(FeatureGroup(g["name"], g["entity"], g["columns"], z[f"group{i}"]))
            truth, drug_truth = header.get("truth"), header.get("drug_truth")
            ds = Dataset(
                cell_ids=z["cell_ids"].astype(object), drug_ids=z["drug_ids"].astype(object), groups=groups,
                cell_index=z["cell_index"], drug_index=z["drug_index"], label=z["label"],
                dose=z["dose"] if "dose" in files else None, label_name=header["label_name"],
                truth=None if truth is None else pd.DataFrame({c: np.asarray(v, dtype=object) for c, v in truth.items()}),
                source=header.get("source", ""), meta={**header.get("meta", {}), "path": path, "normalised_file": True},
                drug_truth=None if drug_truth is None else pd.DataFrame(
                    {c: np.asarray(v, dtype=object) for c, v in drug_truth.items()}),
            )
            if header.get("cell_metadata") is not None:
                ds.cell_metadata = metadata.read_hdf_table(
                    metadata.from_records(header["cell_metadata"], f"data file {path!r}: cell metadata"),
                    ds.cell_ids, f"data file {path!r}: cell metadata")
    except InputError:
        raise
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
        raise InputError(f"data file {path!r}: cannot read the normalised data set ({type(e).__name__}: {e})") from None
    validate_dataset(ds, f"data file {path!r}")  # the one validator the HDF5 reader uses too
    return ds
