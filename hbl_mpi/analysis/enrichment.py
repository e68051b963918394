"""Which metadata groups the top suspects share: Fisher's exact test per (column, value, k), BH-adjusted.

A ranking of single cells answers "which lines"; a curator acts on groups (a tissue, a
culture type, a study). For every metadata column and value, and every k, the 2x2 table

    |                 | in the top k | not in the top k |
    | has the value   | in_top       | n_value - in_top |
    | other cells     | k - in_top   | rest             |

is tested one-sided (the top k hold *more* of the value than chance): Fisher's exact test,
whose one-sided p is the hypergeometric upper tail P(X >= in_top) (:func:`fisher_greater`,
exact integer arithmetic; equal to ``scipy.stats.fisher_exact(..., alternative="greater")``,
which tests/test_enrichment.py checks, without importing scipy: that import alone cost
more than every test of a GDSC2 report together). The p-values of all tests of one report
(every column, value and k together) are adjusted by Benjamini-Hochberg (:func:`bh`).

The universe is the ranked cells: a cell without a value in a column (``""``) counts as
"other cells" for that column, so missing metadata never inflates a group. Values held by
a single cell are not tested (one cell is the ranking itself, not a group; a column of
identifiers, every value unique, gets no test at all).

Pure: tables in, a table out; nothing here reads files.
"""

from __future__ import annotations

from math import comb

import numpy as np
import pandas as pd

COLUMNS = ["column", "value", "k", "in_top", "n_value", "n_cells", "odds_ratio", "p", "q"]
DEFAULT_K = (20, 50)
MIN_GROUP = 2


def bh(p) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q), in the input's order: q_(i) = min_{j >= i} p_(j) m / j, <= 1."""
    p = np.asarray(p, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out


def fisher_greater(a: int, b: int, c: int, d: int) -> tuple[float, float]:
    """(sample odds ratio, one-sided p) of the 2x2 table [[a, b], [c, d]]: P(X >= a) for X
    hypergeometric with row total a + b, column total a + c, grand total a + b + c + d."""
    row, col, n = a + b, a + c, a + b + c + d
    hi = min(row, col)
    num = sum(comb(row, x) * comb(n - row, col - x) for x in range(a, hi + 1))
    p = num / comb(n, col) if num else 0.0
    odds = (a * d / (b * c)) if b * c else (float("inf") if a * d else float("nan"))
    return float(odds), float(min(1.0, p))


def enrichment(ranking: pd.DataFrame, metadata: pd.DataFrame | None, ks=DEFAULT_K) -> pd.DataFrame:
    """One row per tested (column, value, k), sorted by q then p (columns :data:`COLUMNS`).

    ``ranking``: columns cell and rank (1 = most suspicious); ``metadata``: cell + string
    columns, ``""`` missing (``data/metadata.py``). A k not below the number of ranked cells
    is skipped (every cell would be "in the top")."""
    if metadata is None or not len(metadata) or not len(ranking):
        return pd.DataFrame(columns=COLUMNS)
    order = ranking.sort_values("rank", kind="stable")["cell"].astype(str).to_numpy()
    n = len(order)
    meta = metadata.assign(cell=metadata["cell"].astype(str)).drop_duplicates("cell").set_index("cell")
    meta = meta.reindex(order).fillna("").astype(str)
    rows = []
    for col in meta.columns:
        values = meta[col].to_numpy()
        counts = pd.Series(values[values != ""]).value_counts()
        for value, n_value in counts.items():
            if n_value < MIN_GROUP:
                continue
            has = values == value
            for k in ks:
                if not 0 < k < n:
                    continue
                a = int(has[:k].sum())
                odds, p = fisher_greater(a, n_value - a, k - a, n - k - (n_value - a))
                rows.append({"column": str(col), "value": str(value), "k": int(k), "in_top": a,
                             "n_value": int(n_value), "n_cells": n, "odds_ratio": float(odds), "p": float(p)})
    out = pd.DataFrame(rows, columns=COLUMNS[:-1])
    out["q"] = bh(out["p"].to_numpy()) if len(out) else np.zeros(0)
    return out.sort_values(["q", "p", "k"], kind="stable").reset_index(drop=True)[COLUMNS]


def sentence(table: pd.DataFrame | None, alpha: float = 0.01) -> str:
    """The report summary's one sentence on the strongest group with q < ``alpha`` ("" when none)."""
    if table is None or not len(table):
        return ""
    sig = table[table["q"] < alpha]
    if not len(sig):
        return ""
    r = sig.sort_values(["q", "p", "odds_ratio"], ascending=[True, True, False], kind="stable").iloc[0]
    expected = r["k"] * r["n_value"] / r["n_cells"]
    more = len(sig) - 1
    return (f"The top {int(r['k'])} suspects concentrate in {r['column']} = {r['value']}: {int(r['in_top'])} of "
            f"{int(r['k'])}, against {int(r['n_value'])} of {int(r['n_cells'])} cells overall ({expected:.1f} "
            f"expected; Fisher one-sided, BH q = {r['q']:.2g})"
            + (f"; {more} more group test(s) with q < {alpha:g} in enrichment.csv." if more else "."))
