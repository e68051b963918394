"""``data annotate F.h5 --cell-metadata FILE.csv [--out G.h5]``: attach cell metadata to a data file.

The input is never overwritten (house rule): without ``--out`` the result is
``F.annotated.h5`` beside it (``F.annotated.npz`` for a normalised file), and an ``--out``
that is the input itself is refused. A Uno HDF5 file is copied as it is and gets the one
table :data:`metadata.KEY` (a table already there is replaced in the copy); only its
response tables are read to learn its cells, so a 6 GB GDSC file costs a copy, not a
parse. The copy is written to a temporary name, checked and renamed (``atomic.py``).
Features and responses are untouched, so the data checksum, and with it every run's
fingerprint, stays the same.
"""

from __future__ import annotations

import os
import shutil
import warnings

import pandas as pd

from hbl_mpi.core.atomic import replace_file
from hbl_mpi.core.errors import InputError
from hbl_mpi.data import metadata as M


def default_out(path: str) -> str:
    """``F.annotated.h5`` for ``F.h5`` (``.npz`` likewise): beside the input, never the input."""
    root, ext = os.path.splitext(path)
    return f"{root}.annotated{ext or '.h5'}"


def annotate(path: str, csv: str, out: str) -> M.Attached:
    """Write ``path`` with the metadata of ``csv`` to ``out``; InputError on bad input, nothing written."""
    from hbl_mpi.data.normalised import is_normalised_file, read_normalised, write_normalised
    from hbl_mpi.data.uno_h5 import read_uno_responses

    if not os.path.isfile(path):
        raise InputError(f"data file {path!r} does not exist")
    if os.path.exists(out) and os.path.samefile(path, out):
        raise InputError(f"--out {out!r} is the input file: annotate never overwrites its input")
    if os.path.isdir(out):
        raise InputError(f"--out {out!r} is a directory")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise InputError(f"output directory {folder!r} does not exist")
    table = M.read_metadata_csv(csv)
    where = f"cell metadata {csv!r}"
    if is_normalised_file(path):
        ds, info = M.attach(read_normalised(path), table, where)
        write_normalised(ds, out)
        return info
    cells = pd.unique(read_uno_responses(path)["cell"])
    meta, info = M.check_metadata(table, cells, where)

    def write(tmp: str) -> None:
        shutil.copyfile(path, tmp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pd.HDFStore(tmp, mode="a") as store:
                if f"/{M.KEY}" in store.keys():
                    store.remove(M.KEY)
                M.write_hdf(store, meta)

    def verify(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pd.HDFStore(tmp, mode="r") as store:
                n = store.get_storer(M.KEY).nrows
        if n != len(meta):
            raise OSError(f"the new file holds {n} metadata rows, not {len(meta)}")

    replace_file(out, write, verify=verify)
    return info
