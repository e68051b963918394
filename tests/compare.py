"""The one node-table comparison of the suite: a run equals a reference run bit for bit."""

from __future__ import annotations

import numpy as np
import pandas as pd

LOSSES = ("val_loss", "val_loss_last", "test_loss", "train_loss")
"""Float columns compared exactly (bit for bit)."""
SAME = ("epochs_run", "steps", "start_checksum", "inherit_checksum", "status")
"""Columns compared as lists of values."""


def assert_same_nodes(reference: pd.DataFrame, other: pd.DataFrame, *, extra: tuple[str, ...] = (),
                      subset: bool = False) -> pd.DataFrame:
    """``other`` (indexed by node) equals ``reference`` node for node: the losses bit for
    bit, the ``SAME`` (+ ``extra``) columns value for value. ``subset``: ``other`` may hold
    fewer nodes (an adaptive tree inside the full one). Returns ``other`` in the
    reference's order."""
    if subset:
        assert set(other.index) <= set(reference.index)
        reference = reference.loc[[n for n in reference.index if n in set(other.index)]]
    else:
        assert sorted(other.index) == sorted(reference.index)
    other = other.loc[reference.index]
    for col in LOSSES:
        np.testing.assert_array_equal(other[col].to_numpy(), reference[col].to_numpy(), err_msg=col)
    for col in (*SAME, *extra):
        assert list(other[col]) == list(reference[col]), col
    return other
