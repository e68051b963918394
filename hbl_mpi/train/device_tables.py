"""The normalised tables on the training device, and batches gathered from them by index.

A batch of response rows is built by indexing: ``features[entity_index[rows]]`` per
feature group. No duplicated feature rows exist anywhere (Top21's 13 GB of repeated
float32 become ~40 MB), and there is no Python work per row. On a GPU the tables live in
GPU memory, so a batch never crosses the PCIe bus.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hbl_mpi.data.dataset import CELL, Dataset


@dataclass
class DeviceTables:
    features: list[torch.Tensor]  # one (n_entities, width) float32 tensor per feature group
    entity_index: list[torch.Tensor]  # per group: the (R,) int64 row -> entity index it uses
    cell_index: torch.Tensor  # (R,) int64
    label: torch.Tensor  # (R,) float32
    dose: torch.Tensor | None  # (R,) float32 or None
    cell_index_np: np.ndarray  # (R,) int64 on the host, for per-cell bookkeeping
    n_cells: int
    device: torch.device
    drug_index_np: np.ndarray | None = None  # (R,) int64 on the host
    n_drugs: int = 0

    @classmethod
    def from_dataset(cls, ds: Dataset, device: torch.device | str = "cpu") -> "DeviceTables":
        device = torch.device(device)

        def put(a: np.ndarray, dtype) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype)

        cell = put(ds.cell_index, torch.int64)
        drug = put(ds.drug_index, torch.int64)
        return cls(
            features=[put(g.values, torch.float32) for g in ds.groups],
            entity_index=[cell if g.entity == CELL else drug for g in ds.groups],
            cell_index=cell,
            label=put(ds.label, torch.float32),
            dose=None if ds.dose is None else put(ds.dose, torch.float32),
            cell_index_np=np.asarray(ds.cell_index, dtype=np.int64),
            n_cells=ds.n_cells,
            device=device,
            drug_index_np=np.asarray(ds.drug_index, dtype=np.int64),
            n_drugs=ds.n_drugs,
        )

    def index(self, rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64)).to(self.device, non_blocking=True)

    def gather(self, rows: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """(model inputs, labels) of the response rows ``rows`` (an int64 tensor on the device)."""
        xs = [f.index_select(0, e.index_select(0, rows)) for f, e in zip(self.features, self.entity_index)]
        if self.dose is not None:
            xs.append(self.dose.index_select(0, rows))
        return tuple(xs), self.label.index_select(0, rows)

    def gather_pairs(self, cells: torch.Tensor, drugs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Model inputs of arbitrary (cell, drug) pairs, measured or not (no dose column).

        What the diagnosis needs (``trainer.pair_predictions``): a held-out model's
        prediction for every drug of its validation cells, so a cell's responses can be
        compared with the predictions made from any other cell's expression.
        """
        return tuple(f.index_select(0, cells if e is self.cell_index else drugs)
                     for f, e in zip(self.features, self.entity_index))

    @property
    def nbytes(self) -> int:
        ts = self.features + self.entity_index + [self.label] + ([self.dose] if self.dose is not None else [])
        unique = {id(t): t for t in ts}.values()  # the index tensors are shared between groups
        return sum(t.numel() * t.element_size() for t in unique)
