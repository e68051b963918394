"""Which cells to drop or keep (``curate``): the ordering rule, pure and light to import.

The command's parser needs ``CURATE_BY`` and the default without paying for pandas
(``--help`` imports no heavy module), so the rule lives here rather than in impact.py;
the functions take the ranking frame that ``impact.add_impact`` produced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

CURATE_BY = ("impact", "resist", "combined")
SCORE_COLUMN = {"impact": "impact", "resist": "score", "combined": "combined"}
"""The cell_ranking column each ordering sorts by (``score`` is the resist score)."""
DEFAULT_CURATE_BY = "resist"
"""curate's default ordering; chosen by the point-removal study (docs/findings/impact.md §8.3, §8.5): resist
recovered at least as much of the oracle's gain as combined and impact on every measure."""


def harm_order(ranking: pd.DataFrame, by: str) -> pd.DataFrame:
    """The ranking sorted most harmful first by ``by`` (``impact``, ``resist`` = score, ``combined``).

    Ties (a leaf's cells share one impact) are broken by the resist score, then by cell id.
    """
    if by not in CURATE_BY:
        raise ValueError(f"unknown ordering {by!r}; one of {', '.join(CURATE_BY)}")
    key = SCORE_COLUMN[by]
    import numpy as np

    t = ranking.copy()
    t["_key"] = t[key].replace([np.inf, -np.inf], np.nan).astype("float64")
    t["_tie"] = t["score"].replace([np.inf, -np.inf], np.nan).astype("float64")
    t = t.sort_values(["_key", "_tie", "cell"], ascending=[False, False, True], na_position="last",
                      kind="mergesort")
    return t.drop(columns=["_key", "_tie"]).reset_index(drop=True)


def _diagnosis_words(row) -> str:
    """The diagnosis, when the ranking carries one (``report_cells.with_diagnosis``), as a clause.

    A swap names the likely identity: such a cell and its look-alike resist about equally
    and the data cannot say which of the two is mislabelled (docs/findings/impact.md §8.6).
    """
    kind = row.get("diagnosis") if hasattr(row, "get") else None
    if not isinstance(kind, str) or kind in ("", "none"):
        return ""
    if kind == "swap" and isinstance(row.get("likely_identity"), str) and row.get("likely_identity"):
        return f"; diagnosis swap: its responses fit {row['likely_identity']}'s profile, check the pair's identity"
    return f"; diagnosis {kind}"


def curate_selection(ranking: pd.DataFrame, by: str, k: int, mode: str) -> pd.DataFrame:
    """The ``k`` cells to drop (``mode = "drop"``: most harmful) or keep (``"keep"``: most beneficial).

    Columns cell, score, impact, reason (a short sentence naming the ordering, the
    cell's place in it and, when the ranking has diagnosis columns, the diagnosis). Raises ValueError for k outside 1 .. cells - 1.
    """
    import numpy as np

    n = len(ranking)
    if not 1 <= k < n:
        raise ValueError(f"K must be in 1 .. {n - 1} (the ranking has {n} cells); got {k}")
    order = harm_order(ranking, by)
    if mode == "drop":
        sel = order.head(k).copy()
        place = np.arange(1, k + 1)
        words = "most harmful"
    elif mode == "keep":
        sel = order.tail(k).iloc[::-1].copy()
        place = np.arange(1, k + 1)
        words = "most beneficial"
    else:
        raise ValueError(f"mode must be 'drop' or 'keep'; got {mode!r}")
    key = SCORE_COLUMN[by]
    sel["reason"] = [f"#{p} {words} of {n} by {by} ({key} {v:.4g}){_diagnosis_words(row)}"
                     for p, v, (_, row) in zip(place, sel[key], sel.iterrows())]
    cols = ["cell", "score", "impact", "reason"]
    for c in ("impact",):
        if c not in sel:
            sel[c] = np.nan
    return sel[cols].reset_index(drop=True)


def group_selection(meta: pd.DataFrame | None, cell_ids, spec: str) -> pd.DataFrame:
    """The cells of ``spec`` = ``COLUMN=VALUE`` (``curate --drop-group``): columns cell, column,
    value, reason. ``VALUE`` ``NA`` also takes the cells with no value (tree/groups.py's rule).
    InputError (one line) for a malformed spec, no metadata, an unknown column, a value no
    cell has, or a group that is every cell (nothing would be left)."""
    import pandas as pd

    from hbl_mpi.core.errors import InputError
    from hbl_mpi.tree.groups import cell_labels

    column, sep, value = str(spec).partition("=")
    column, value = column.strip(), value.strip()
    if not sep or not column or not value:
        raise InputError(f"--drop-group {spec!r}: expected COLUMN=VALUE")
    if meta is None:
        raise InputError("--drop-group: the data has no cell metadata (attach it with `data annotate`)")
    cols = [str(c) for c in meta.columns if c != "cell"]
    if column not in cols:
        raise InputError(f"--drop-group: no cell metadata column {column!r} (columns: {', '.join(cols)})")
    labels = cell_labels(meta, cell_ids, column)
    hit = labels == value
    if not hit.any():
        values = sorted(set(labels.tolist()))
        raise InputError(f"--drop-group: no cell has {column} = {value!r} (values: {', '.join(values[:10])}"
                         f"{', ...' if len(values) > 10 else ''})")
    if hit.all():
        raise InputError(f"--drop-group: every cell has {column} = {value!r}; nothing would be left")
    cells = [str(c) for c, h in zip(cell_ids, hit) if h]
    return pd.DataFrame({"cell": cells, "column": column, "value": value,
                         "reason": f"metadata group {column} = {value}"})
