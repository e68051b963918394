"""A finished node as plain data: the row, history and per-unit tables a worker sends to
rank 0 (the wire format of ``messages.NodeReport.payload``) and the ledger writes."""

from __future__ import annotations

import numpy as np

from hbl_mpi.store.schema import HISTORY, PER_NODE_TABLES, SCHEMA


def payload(outcome, transfer_s: float = 0.0) -> dict:
    """A trained node (``trainer.NodeOutcome``) as plain data: row fields, history and the
    per-node tables (``PER_NODE_TABLES``, cells and drugs as dataset indices): what a worker
    reports to rank 0."""
    o = outcome
    return {
        "row": {
            "epochs_planned": o.epochs_planned, "epochs_run": o.epochs_run,
            "stopped_early": bool(o.stopped_early), "train_loss": o.train_loss,
            "val_loss": o.val_loss, "val_loss_last": o.val_loss_last, "test_loss": o.test_loss,
            "n_train_rows": o.n_train_rows, "n_val_rows": o.n_val_rows,
            "n_train_cells": o.n_train_cells, "n_val_cells": o.n_val_cells, "steps": o.steps,
            "train_s": o.train_s, "transfer_s": transfer_s, "best_epoch": o.best_epoch,
            "start_checksum": o.start_checksum,
            "inherit_checksum": o.inherit_state.checksum(), "resumed_from": o.resumed_from,
        },
        "history": [_history_dict(o.node, h) for h in o.history],
        "tables": {name: tuple(np.asarray(v) for v in getattr(o, name)) for name in PER_NODE_TABLES
                   if getattr(o, name, None) is not None},
    }


def node_row(node: str, parent: str, stage: int, status: str, **fields) -> dict:
    """One row of the ``nodes`` table (``NODES``); ``fields`` fill the rest."""
    row = {"node": node, "parent": parent, "stage": stage, "status": status, "error": ""}
    row.update(fields)
    return row


def node_tables(tables: dict, cell_ids, drug_ids) -> dict:
    """A payload's per-node tables with ids for indices: a column named ``cell`` (``drug``)
    holds indices into the dataset's ``cell_ids`` (``drug_ids``)."""
    ids = {"cell": np.asarray(cell_ids), "drug": np.asarray(drug_ids)}
    out = {}
    for name, arrays in tables.items():
        cols = SCHEMA[name].names[1:]  # without node
        out[name] = tuple(ids[c][np.asarray(a, dtype=np.int64)] if c in ids else np.asarray(a)
                          for c, a in zip(cols, arrays))
    return out


def _history_dict(node: str, h) -> dict:
    d = dict(h) if isinstance(h, dict) else {k: getattr(h, k) for k in ("epoch", "loss", "val_loss", "seconds")}
    d["node"] = node
    return {k: d[k] for k in HISTORY.names}
