"""What every section builder reads: the runs, the report's options, and what is computed
once from them and shared (the cell ranking, the impact estimate, the diagnosis, the
baselines)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import pandas as pd

from hbl_mpi.analysis import paper_stats as A
from hbl_mpi.analysis import ranking as R
from hbl_mpi.analysis.impact import ImpactResult, add_impact, run_impact
from hbl_mpi.core.errors import InputError
from hbl_mpi.report.cells import Diagnosis, diagnose_run, load_reference, with_diagnosis
from hbl_mpi.store.results import RunTables, read_results


# ---------------------------------------------------------------------------
# building: one builder per part of the report
# ---------------------------------------------------------------------------
@dataclass
class ReportInputs:
    """What every section builder reads: the runs and the report's options.

    The cell ranking is computed once, on first use, and shared: the ranking, detection,
    summary (and any later) sections all show the same one.
    """

    runs: list[RunTables]
    method: str = R.DEFAULT_METHOD
    top: int = 30
    baselines: bool = False
    data_path: str | None = None  # the baselines' data file (checked before any work)
    dataset: object | None = None  # its Dataset, read once and checked against the run's data checksum
    kfold: int = 5
    log: Callable[..., object] = print
    reference: str | None = None  # a second screen (Uno file) to hold the ranking against
    cells: int = 20  # top cells given a diagnosis page
    enrich_k: tuple[int, ...] = (20, 50)  # the top-k sizes of the metadata group tests (enrichment.py)

    @property
    def labels(self) -> list[str]:
        return [r.label for r in self.runs]

    @cached_property
    def same_data(self) -> list[RunTables]:
        """The runs made on the first run's data (by checksum): their rankings may be averaged."""
        return [r for r in self.runs if r.data_checksum == self.runs[0].data_checksum]

    @cached_property
    def cell_metadata(self) -> pd.DataFrame | None:
        """The cells' metadata (tissue, study...), when the data had it (``data/metadata.py``)."""
        return next((r.cell_metadata for r in self.same_data if r.cell_metadata is not None), None)

    @cached_property
    def truth(self) -> pd.DataFrame | None:
        """The planted anomalies of that data, when it has them."""
        return next((r.truth for r in self.same_data if r.truth is not None), None)

    @cached_property
    def rankings(self) -> dict[str, pd.DataFrame]:
        """Each run's cell ranking, by run label."""
        return {r.label: R.rank_cells(r.cell_val, r.nodes, method=self.method, plan=r.plan) for r in self.runs}

    @cached_property
    def impact(self) -> ImpactResult | None:
        """The first run's impact estimate (None: its results predate ``cell_test``)."""
        return run_impact(self.runs[0])

    @cached_property
    def scored(self) -> pd.DataFrame:
        """The first run's ranking, or the scores averaged over the runs on its data
        (evidence columns from the first run); with ``impact``, ``impact_sd`` and
        ``combined`` when the run has an impact estimate."""
        main = self.rankings[self.runs[0].label]
        if len(self.same_data) > 1:
            comb = R.combine_rankings([self.rankings[r.label] for r in self.same_data])
            main = comb.merge(main.drop(columns=["score", "rank"]), on="cell", how="left")
        return main if self.impact is None else add_impact(main, self.impact)

    @cached_property
    def diagnosis(self) -> Diagnosis | None:
        """What is wrong with each ranked cell (None: the run has no ``cell_pred`` table)."""
        ref = load_reference(self.reference) if self.reference else None
        dg = diagnose_run(self.runs[0], self.scored, ref, full=True, metadata=self.cell_metadata)
        if dg is not None:
            dg.reference_path = self.reference or ""
        return dg

    @cached_property
    def ranking(self) -> pd.DataFrame:
        """The report's ranking: ``scored`` with the diagnosis columns when there is one."""
        return self.scored if self.diagnosis is None else with_diagnosis(self.scored, self.diagnosis.table)

    @cached_property
    def baseline_results(self) -> list:
        """The baselines (``baselines.run_baselines``), run once when asked for: the detection
        and the cross-screen sections both score them."""
        if not self.baselines:
            return []
        from hbl_mpi.analysis.baselines import run_baselines

        return run_baselines(self.data_path, self.runs[0].config, kfold=self.kfold, log=self.log,
                             dataset=self.dataset)


def load_runs(paths: list[str]) -> list[RunTables]:
    if not paths:
        raise InputError("report needs at least one results file")
    return A.unique_labels([read_results(p) for p in paths])


def _data_path(run: RunTables) -> str:
    p = str(run.config.get("data") or "")
    if not p:
        raise InputError(f"{run.path!r} records no data path; pass --data for the baselines")
    if not os.path.isabs(p) and not os.path.exists(p):
        alt = os.path.join(os.path.dirname(os.path.abspath(run.path)), p)
        p = alt if os.path.exists(alt) else p
    if not os.path.exists(p):
        raise InputError(f"data file {p!r} of {run.path!r} does not exist; pass --data for the baselines")
    return p
