"""The report's cell diagnosis: per-cell pages of the top flagged cells and the cross-screen section.

Mechanism around the pure rules of ``hbl_mpi/diagnosis.py``: read the run's ``cell_pred`` and
``cell_neighbours`` tables, diagnose every ranked cell, draw one page per top cell (measured
against predicted response, residual by drug, error by stage, nearest cells by expression,
the diagnosis in one sentence) and, with ``report --reference OTHER.h5``, hold the ranking
against a second screen. ``report.build`` calls ``add_sections`` with a few lines.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import diagnosis as D
from .errors import InputError

DIAG_COLUMNS = ["diagnosis", "likely_identity", "confidence", "bias_t", "resid_pred_corr", "identity_gain",
                "neighbour_coherence", "bias_share", "response_pred_corr", "identity_fit", "best_fit_cell",
                "n_drugs", "diag_node"]
REF_COLUMNS = ["screen_agreement", "shared_drugs", "screen_offset", "model_this_corr", "model_ref_corr",
               "model_this_mse", "model_ref_mse"]


def _table(path: str, key: str) -> pd.DataFrame | None:
    try:
        with pd.HDFStore(path, mode="r") as store:
            return store[key] if "/" + key in store.keys() else None
    except Exception as e:  # HDF5 errors come in many types
        raise InputError(f"cannot read table {key!r} of {path!r}: {type(e).__name__}: {e}") from None


@dataclass
class Diagnosis:
    """What the report needs: the per-cell diagnosis table and the inputs behind it."""

    table: pd.DataFrame  # one row per cell: evidence, diagnosis, likely_identity, confidence
    grid: D.Grid
    cell_pred: pd.DataFrame
    neighbours: pd.DataFrame | None
    reference: pd.DataFrame | None = None  # cross_screen output
    reference_path: str = ""


def load_reference(path: str) -> pd.DataFrame:
    """A second screen's responses (Uno format): cell, drug, label."""
    from .data.uno_h5 import read_uno_responses

    if not os.path.isfile(path):
        raise InputError(f"--reference {path!r} does not exist")
    return read_uno_responses(path)


def diagnose_run(run, ranking: pd.DataFrame, reference: pd.DataFrame | None = None,
                 rules: D.Rules = D.RULES, full: bool = False):
    """Diagnose every ranked cell of one run (``analysis.RunTables``); None when the run has
    no ``cell_pred`` table (results written before the diagnosis existed, or data with doses).
    ``full`` returns the ``Diagnosis`` (grid, inputs) instead of the table alone."""
    cp = _table(run.path, "cell_pred")
    if cp is None or not len(cp):
        return None
    nb = _table(run.path, "cell_neighbours")
    grid = D.prediction_grid(cp, run.nodes)
    xs = None
    if reference is not None:
        this = cp[np.isfinite(cp["label"].to_numpy(dtype=float))]
        this = this[this["node"].astype(str).isin(set(grid.node))]
        xs = D.cross_screen(this[["cell", "drug", "label"]], reference, grid)
    table = D.diagnose(grid, ranking, nb, rules, xs)
    if not full:
        return table
    return Diagnosis(table, grid, cp, nb, xs)
