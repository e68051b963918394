"""Fabricated results files for the analysis and report tests, written through the results
module (``ResultsWriter``), so that they have exactly the schema a run's file has."""

from __future__ import annotations

import pandas as pd

from hbl_mpi.store.results import CELL_TEST, CELL_VAL, HISTORY, PLAN, ResultsWriter


def write_results(path, nodes, *, history=(), cell_val=(), cell_test=None, plan=None, truth=None, config=None,
                  versions=None, data_checksum: str = "abc") -> str:
    """Write a results file holding ``nodes`` (records or a frame), their ``history``,
    ``cell_val`` and (when given) ``cell_test`` rows (records or frames), the ``plan`` and the
    ``truth``; returns its path."""
    rows = nodes.to_dict("records") if isinstance(nodes, pd.DataFrame) else list(nodes)
    hist = pd.DataFrame(history, columns=HISTORY.names)
    per_node = {"cell_val": pd.DataFrame(cell_val, columns=CELL_VAL.names)}
    if cell_test is not None:
        per_node["cell_test"] = pd.DataFrame(cell_test, columns=CELL_TEST.names)
    w = ResultsWriter(str(path), config=dict(config or {}), versions=dict(versions or {}),
                      data_checksum=data_checksum,
                      plan_frame=pd.DataFrame(plan if plan is not None else [], columns=PLAN.names),
                      truth=None if truth is None else pd.DataFrame(truth), flush_seconds=0.0)
    for row in rows:
        node = row["node"]
        w.add(row, hist[hist["node"] == node].to_dict("records"),
              {name: df[df["node"] == node] for name, df in per_node.items()})
    w.flush()
    return str(path)
