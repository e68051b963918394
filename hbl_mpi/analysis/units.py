"""The partition unit (cells, or drugs for ``partition = "drugs"``) seen by the analysis.

The ranking (``ranking.py``), the impact estimate (``impact.py``) and the curation rule
(``curation.py``) are functions of per-unit tables: one held-out error per (node, unit), the
plan's validation and added-training sets, the planted truth. They were written when cells
were the only unit, so they read the unit's id from a column named ``cell``. A drugs run
writes the same tables per drug (``drug_val``, ``drug_test``, the truth's drug rows, the
plan's ``val_drug`` / ``train_added_drug`` roles). Rather than a second copy of every
score, :func:`unit_view` presents a drugs run in the cell-shaped form those functions read
(nothing is recomputed: only names change), and :func:`to_unit` renames the id column
back on the way out, so every file and table a user sees says ``drug``.

Diagnosis and the metadata enrichment are not part of the view: the diagnosis kinds
(label noise, shift, swap, distinct) are read from cell expression and from each held-out
cell's predictions on every drug (``cell_pred``), and the metadata describes cells; none
has a per-drug counterpart, so the view carries none of them.
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd

from hbl_mpi.store.results import RunTables

PLAN_ROLES = {"val_drug": "val", "train_added_drug": "train_added"}
"""A drugs plan's roles -> the cell plan's (the plan table holds drug ids in ``cell``)."""


def _as_cell(df: pd.DataFrame | None, unit: str) -> pd.DataFrame | None:
    return None if df is None else df.rename(columns={unit: "cell"})


def unit_view(run: RunTables) -> RunTables:
    """``run`` as the cell-shaped analysis reads it: for a drugs run, ``cell_val`` /
    ``cell_test`` / ``truth`` / ``plan`` hold the per-drug tables with the drug id in
    ``cell``; a cells run is returned as it is."""
    if run.unit == "cell":
        return run
    plan = run.plan
    if plan is not None:
        plan = plan.assign(role=plan["role"].astype(str).replace(PLAN_ROLES))
    drug_val = run.drug_val if run.drug_val is not None else pd.DataFrame(columns=["node", "drug", "n_rows", "mse"])
    return replace(run, cell_val=_as_cell(drug_val, "drug"), cell_test=_as_cell(run.drug_test, "drug"),
                   truth=_as_cell(run.drug_truth, "drug"), plan=plan, cell_pred=None, cell_neighbours=None,
                   cell_metadata=None, drug_val=None, drug_test=None, drug_truth=None)


def to_unit(df: pd.DataFrame, unit: str) -> pd.DataFrame:
    """A cell-shaped result (ranking, impact, selection) with its columns named after the
    unit: ``cell`` becomes ``drug`` (and ``impact_group_cells`` ``impact_group_drugs``) for a
    drugs run; a cells run's stays as it is."""
    if unit == "cell":
        return df
    return df.rename(columns={c: c.replace("cell", unit) for c in df.columns if "cell" in str(c)})


def common_unit(runs: list[RunTables]) -> str:
    """The unit every run shares; ValueError when runs of different partitions are mixed."""
    units = sorted({r.unit for r in runs})
    if len(units) > 1:
        raise ValueError(f"runs of different partition units ({', '.join(units)}) cannot be reported together")
    return units[0] if units else "cell"
