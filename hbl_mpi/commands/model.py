"""``python -m hbl_mpi model --preset P --data F.h5``: the Uno layer table and parameter count.

Widths come from the data file (one encoder per feature group), so the count printed is
the one a run on that file trains and forks (the fork buffer is 3x it: weights + Adam).
"""

from __future__ import annotations

import json


def configure(p) -> None:
    from hbl_mpi.core.config import CHOICES  # not ..uno: building the parser must not import torch

    p.add_argument("--preset", default="small", help=f"model preset: {', '.join(CHOICES['model'])} (default small)")
    p.add_argument("--data", required=True, help="data file (CANDLE Uno HDF5) whose feature widths the model reads")
    p.add_argument("--dropout", type=float, default=None, help="dropout rate overriding the preset's")
    p.add_argument("--json", action="store_true", help="also print one JSON object as the last line")


def run(args) -> int:
    from hbl_mpi.data import load_dataset
    from hbl_mpi.uno import InputSpec, build_model, layer_table, n_parameters, preset_of

    preset = preset_of(args.preset)
    ds = load_dataset(args.data)
    inputs = InputSpec.of(ds)
    model = build_model(inputs, args.preset, args.dropout)
    rows = layer_table(model)
    total = n_parameters(model)
    rate = preset.dropout if args.dropout is None else args.dropout
    print(f"Uno preset {args.preset!r} ({preset.note}); dropout {rate}; inputs: "
          + ", ".join(f"{name} ({w})" for name, w in inputs.groups) + (", dose (1)" if inputs.has_dose else ""))
    wb = max(len(r["block"]) for r in rows)
    print(f"{'block':<{wb}}  {'layer':<8} {'in':>7} {'out':>7} {'params':>12}")
    for r in rows:
        print(f"{r['block']:<{wb}}  {r['layer']:<8} {r['in']:>7} {r['out']:>7} {r['params']:>12,}")
    fork_mb = 3 * total * 4 / 1e6
    print(f"total parameters: {total:,}  (fork buffer: weights + Adam moments = {fork_mb:,.1f} MB float32)")
    if args.json:
        print(json.dumps({"preset": args.preset, "parameters": total, "fork_bytes": 3 * total * 4,
                          "layers": rows}))
    return 0
