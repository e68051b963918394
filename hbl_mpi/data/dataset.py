"""The normalised drug-response dataset: one feature row per cell and per drug.

The CANDLE Uno HDF5 format stores one feature row per *response* row (Top21: ~13 GB of
duplicated float32). Everything in hbl_mpi works on this normalised form instead: entity
feature tables plus a response table of (cell index, drug index, label[, dose]). A
training batch is gathered by index from these tables, so no row is ever duplicated.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

CELL = "cell"
DRUG = "drug"


@dataclass
class FeatureGroup:
    """One block of input features for one kind of entity.

    ``values[i]`` is the feature vector of entity ``i`` (a cell or a drug, by index into
    ``Dataset.cell_ids`` / ``Dataset.drug_ids``). The Uno model builds one encoder per
    group.
    """

    name: str  # e.g. "cell.rnaseq", "drug.descriptors", "drug.fingerprints"
    entity: str  # CELL or DRUG
    columns: list[str]
    values: np.ndarray  # float32, shape (n_entities, len(columns))

    @property
    def width(self) -> int:
        return int(self.values.shape[1])


@dataclass
class Dataset:
    """Normalised tables of one drug-response data set (see docs/design.md §2.1)."""

    cell_ids: np.ndarray  # object array of str, shape (C,)
    drug_ids: np.ndarray  # object array of str, shape (D,)
    groups: list[FeatureGroup]  # cell groups first, then drug groups
    cell_index: np.ndarray  # int32 (R,), index into cell_ids
    drug_index: np.ndarray  # int32 (R,), index into drug_ids
    label: np.ndarray  # float32 (R,)
    dose: np.ndarray | None = None  # float32 (R,) or None
    label_name: str = "AUC"  # "AUC", or "Growth" when dose is present
    truth: pd.DataFrame | None = None  # columns cell, kind (planted anomalies)
    source: str = ""
    meta: dict = field(default_factory=dict)
    cell_metadata: pd.DataFrame | None = None  # cell + string columns, "" = missing (data/metadata.py);
    # an annotation, not data the model sees: outside ``checksum``, so annotating a file keeps its runs valid
    drug_truth: pd.DataFrame | None = None  # columns drug, kind (planted drug anomalies)

    @property
    def n_cells(self) -> int:
        return len(self.cell_ids)

    @property
    def n_drugs(self) -> int:
        return len(self.drug_ids)

    @property
    def n_rows(self) -> int:
        return len(self.label)

    def groups_of(self, entity: str) -> list[FeatureGroup]:
        return [g for g in self.groups if g.entity == entity]

    def feature_widths(self) -> dict[str, int]:
        return {g.name: g.width for g in self.groups}

    def normalized_nbytes(self) -> int:
        """Bytes of the normalised tables (features + response table)."""
        n = sum(g.values.nbytes for g in self.groups)
        n += self.cell_index.nbytes + self.drug_index.nbytes + self.label.nbytes
        if self.dose is not None:
            n += self.dose.nbytes
        return int(n)

    def duplicated_nbytes(self) -> int:
        """Bytes the same data takes in the duplicated (one feature row per response) form."""
        width = sum(g.width for g in self.groups) + (1 if self.dose is not None else 0)
        return int(self.n_rows * (width * 4 + 4))

    def checksum(self) -> str:
        """SHA-256 over ids, features and responses: identifies the data in results."""
        h = hashlib.sha256()
        for ids in (self.cell_ids, self.drug_ids):
            h.update("\x1f".join(map(str, ids)).encode())
        for g in self.groups:
            h.update(g.name.encode())
            h.update(np.ascontiguousarray(g.values, dtype=np.float32).tobytes())
        for a in (self.cell_index, self.drug_index, self.label, self.dose):
            if a is not None:
                h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    def subset_cells(self, keep) -> "Dataset":
        """The same data with only the cells in ``keep`` (ids), their responses and truth rows.

        Drugs and their features are kept whole (a drug may lose all its rows); the cell
        order of the original is preserved.
        """
        keep = {str(c) for c in keep}
        mask, new_index, rows = _kept(self.cell_ids, keep, self.cell_index)
        return Dataset(self.cell_ids[mask], self.drug_ids, self._groups_kept(CELL, mask),
                       new_index[np.asarray(self.cell_index, dtype=np.int64)[rows]].astype(self.cell_index.dtype),
                       self.drug_index[rows], self.label[rows], None if self.dose is None else self.dose[rows],
                       self.label_name, _rows_kept(self.truth, "cell", keep), self.source, dict(self.meta),
                       _rows_kept(self.cell_metadata, "cell", keep), self.drug_truth)

    def subset_drugs(self, keep) -> "Dataset":
        """The same data with only the drugs in ``keep`` (ids), their responses and drug
        truth rows (``curate`` on a drugs-partition run). Cells are kept whole."""
        keep = {str(d) for d in keep}
        mask, new_index, rows = _kept(self.drug_ids, keep, self.drug_index)
        return Dataset(self.cell_ids, self.drug_ids[mask], self._groups_kept(DRUG, mask), self.cell_index[rows],
                       new_index[np.asarray(self.drug_index, dtype=np.int64)[rows]].astype(self.drug_index.dtype),
                       self.label[rows], None if self.dose is None else self.dose[rows],
                       self.label_name, self.truth, self.source, dict(self.meta), self.cell_metadata,
                       _rows_kept(self.drug_truth, "drug", keep))

    def _groups_kept(self, entity: str, mask: np.ndarray) -> list["FeatureGroup"]:
        """The feature groups with only the kept rows of ``entity``'s groups."""
        return [FeatureGroup(g.name, g.entity, g.columns, g.values[mask] if g.entity == entity else g.values)
                for g in self.groups]

    def summary(self) -> dict:
        """Plain-data summary used by ``data inspect`` and the run log."""
        lab = self.label.astype(np.float64)
        out = {
            "cells": self.n_cells,
            "drugs": self.n_drugs,
            "rows": self.n_rows,
            "label": self.label_name,
            "has_dose": self.dose is not None,
            "feature_widths": self.feature_widths(),
            "label_stats": {
                "min": float(lab.min()) if len(lab) else None,
                "mean": float(lab.mean()) if len(lab) else None,
                "max": float(lab.max()) if len(lab) else None,
                "std": float(lab.std()) if len(lab) else None,
            },
            "normalized_bytes": self.normalized_nbytes(),
            "duplicated_bytes": self.duplicated_nbytes(),
        }
        out["normalized_fraction"] = (
            out["normalized_bytes"] / out["duplicated_bytes"] if out["duplicated_bytes"] else None
        )
        if self.truth is not None:
            out["truth"] = {str(k): int(v) for k, v in self.truth["kind"].value_counts().items()}
        if self.drug_truth is not None:
            out["drug_truth"] = {str(k): int(v) for k, v in self.drug_truth["kind"].value_counts().items()}
        if self.cell_metadata is not None:
            out["cell_metadata"] = {"columns": [c for c in self.cell_metadata.columns if c != "cell"],
                                    "cells": int(len(self.cell_metadata))}
        return out


def combine_truth(truth: pd.DataFrame | None, drug_truth: pd.DataFrame | None) -> pd.DataFrame | None:
    """The one ``truth`` table of a Uno or results file: the planted cells (cell, kind) and,
    when there are planted drugs, a ``unit`` column ("cell" / "drug") and a ``drug`` column
    (the drug rows hold their id there and "" in ``cell``). Without drug anomalies the table
    is exactly the old (cell, kind), so files of cell anomalies stay byte for byte the same."""
    if drug_truth is None or not len(drug_truth):
        return truth
    cells = truth if truth is not None else pd.DataFrame({"cell": [], "kind": []})
    parts = [pd.DataFrame({"cell": cells["cell"].astype(str), "kind": cells["kind"].astype(str),
                           "unit": CELL, "drug": ""}),
             pd.DataFrame({"cell": "", "kind": drug_truth["kind"].astype(str), "unit": DRUG,
                           "drug": drug_truth["drug"].astype(str)})]
    out = pd.concat(parts, ignore_index=True)
    return out.astype({c: object for c in out.columns})


def split_truth(t: pd.DataFrame | None) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """``combine_truth`` undone: (cell truth: cell, kind; drug truth: drug, kind), None when empty."""
    if t is None or "unit" not in t.columns:
        return t, None
    unit = t["unit"].astype(str)
    cells = t.loc[unit == CELL, ["cell", "kind"]].reset_index(drop=True)
    drugs = t.loc[unit == DRUG, ["drug", "kind"]].reset_index(drop=True)
    return (cells if len(cells) else None), (drugs if len(drugs) else None)


def _rows_kept(table: pd.DataFrame | None, column: str, keep: set[str]) -> pd.DataFrame | None:
    """``table``'s rows whose ``column`` is kept (None stays None)."""
    if table is None:
        return None
    return table[table[column].astype(str).isin(keep)].reset_index(drop=True)


def _kept(ids: np.ndarray, keep: set[str], index: np.ndarray):
    """(which ids are kept, each id's new index or -1, which response rows are kept)."""
    mask = np.array([str(x) in keep for x in ids], dtype=bool)
    new_index = np.full(len(ids), -1, dtype=np.int64)
    new_index[mask] = np.arange(int(mask.sum()))
    return mask, new_index, mask[np.asarray(index, dtype=np.int64)]


def cell_feature_matrix(ds: Dataset) -> np.ndarray:
    """(cells, features): every cell feature group side by side, each column standardised.

    Constant columns are dropped (they carry nothing and make z-scores undefined).
    """
    blocks = [g.values.astype(np.float64) for g in ds.groups_of(CELL)]
    if not blocks:
        return np.zeros((ds.n_cells, 0))
    x = np.concatenate(blocks, axis=1)
    sd = x.std(axis=0)
    keep = sd > 0
    return (x[:, keep] - x[:, keep].mean(axis=0)) / sd[keep]
