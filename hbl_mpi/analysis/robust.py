"""Robust location and scale: the one robust z-score every score in the analysis uses.

Scores here (a cell's resist, its impact, its diagnosis evidence) have heavy tails by design:
the cells we look for are the outliers. Median and MAD are not moved by them, so a z-score
built on them says how far a cell stands from the bulk, not from a mean the outliers drag.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MAD_SCALE = 1.4826  # MAD -> standard deviation for a normal distribution


def robust_z(x: pd.Series, *, constant: str = "centred") -> pd.Series:
    """(x - median) / (1.4826 MAD), with +-inf treated as missing (NaN stays NaN).

    ``constant``: what a series with no spread (MAD 0, or all missing) gives:
    ``"centred"``: x - median (unit scale), ``"zero"``: zeros.
    """
    if constant not in ("centred", "zero"):
        raise ValueError(f"constant must be 'centred' or 'zero', not {constant!r}")
    v = x.replace([np.inf, -np.inf], np.nan).astype("float64")
    med = v.median()
    mad = MAD_SCALE * (v - med).abs().median()
    if not np.isfinite(mad) or mad <= 0:
        return (v - med) * 0.0 if constant == "zero" else v - med
    return (v - med) / mad
