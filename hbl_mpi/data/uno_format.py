"""The CANDLE Uno HDF5 ("Top21") format's names and the store both sides open it through:
the partitions, labels, dose columns and input types a file may hold, the side table of
column names, and ``_Store`` (a checked ``pd.HDFStore`` whose errors become one-line
input errors). The reader is ``uno_h5.py``, the writer ``uno_write.py``."""

from __future__ import annotations

import os
import warnings

import pandas as pd

from hbl_mpi.core.errors import InputError
from hbl_mpi.core.hdf5_guard import check_file

PARTITIONS = ("train", "val", "test")

LABELS = ("AUC", "Growth")

DOSE_COLUMNS = ("dose", "Dose1")

DEFAULT_INPUTS = ("cell.rnaseq", "drug.descriptors", "drug.fingerprints")
"""Input types of ``x_*_0``, ``x_*_1``, ``x_*_2`` when the file has no ``model`` key."""

FEATURE_NAMES_KEY = "feature_names"
"""Side table (group, name) with every group's column names: HDF5 object headers cannot
hold thousands of column names (pandas stores them as node attributes, limit 64 KiB), so
wide groups are written with blank column names, as the real Top21 file does."""

LABEL_RANGES = {"AUC": (0.0, 1.0), "Growth": (-100.0, float("inf"))}
"""The range each label is declared to have (docs/design.md §1: AUC in [0, 1]; growth in percent of
the control, at least -100 = every cell killed). Rows outside it are read (fitted AUCs
slightly above 1 exist) with a warning naming their count."""

CHUNK_BYTES = 128 << 20

_MAX_NAME_PICKLE = 30_000  # bytes of pickled column names that still fit in a node attribute


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()


class _Store:
    """An ``HDFStore`` opened read-only whose I/O failures become ``InputError``.

    A truncated or damaged file often opens fine and fails only when a table is read, so
    every read goes through ``select``/``nrows``/``attrs`` here and names the key.
    """

    def __init__(self, path: str):
        self.path = path
        if not os.path.exists(path):
            raise InputError(f"data file {path!r} does not exist")
        if not os.path.isfile(path):
            raise InputError(f"data file {path!r} is not a regular file")
        import tables

        try:
            is_hdf5 = tables.is_hdf5_file(path)
        except Exception as e:  # unreadable, permission denied, ...
            raise InputError(f"data file {path!r} cannot be read: {_one_line(e)}") from None
        if not is_hdf5:
            raise InputError(f"data file {path!r} is not an HDF5 file")
        check_file(path, "data file")  # before pandas: PyTables would unpickle its attributes
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.store = pd.HDFStore(path, mode="r")
                self.keys = {k.lstrip("/") for k in self.store.keys()}
        except Exception as e:
            raise InputError(f"data file {path!r} is damaged or truncated (cannot open it: {_one_line(e)})") from None

    def close(self) -> None:
        self.store.close()

    def _fail(self, what: str, e: Exception) -> InputError:
        return InputError(f"data file {self.path!r} is damaged or truncated: cannot read {what} ({_one_line(e)})")

    def nrows(self, key: str) -> int:
        try:
            n = self.store.get_storer(key).nrows
        except Exception as e:
            raise self._fail(f"key {key!r}", e) from None
        if n is None:
            raise InputError(f"data file {self.path!r}: key {key!r} is not a pandas table")
        return int(n)

    def select(self, key: str, start: int | None = None, stop: int | None = None) -> pd.DataFrame:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = self.store.select(key, start=start, stop=stop)
        except Exception as e:
            where = f"key {key!r}" + (f" rows {start}:{stop}" if start is not None else "")
            raise self._fail(where, e) from None
        if not isinstance(out, pd.DataFrame):
            raise InputError(f"data file {self.path!r}: key {key!r} is not a table (got {type(out).__name__})")
        return out

    def attrs(self, key: str) -> dict:
        try:
            a = self.store.get_storer(key).attrs
            return {name: getattr(a, name) for name in a._v_attrnames}
        except Exception as e:
            raise self._fail(f"the attributes of key {key!r}", e) from None
