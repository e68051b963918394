"""``python -m hbl_mpi plan``: build the sublearning plan (docs/design.md §3) and print its shape.

Settings come from the same places as ``run`` (a TOML config and ``--set``), and the
plan flags (``--data``, ``--n``, ``--s``, ...) are just ``--set`` overrides applied last,
so the plan printed here is exactly the plan ``run`` would train with the same inputs,
and every check (N > cells, N < 2, a missing file, an unknown order) is the one
``load_config``/``build_plan`` already make. Only ``hbl_mpi.data`` and ``hbl_mpi.tree.plan``
are imported (no torch, no MPI), so the command answers in well under a second on a
thousand cells.

``--out plan.csv`` writes the columns ``node, parent, stage, cell, role`` (role ``val``,
``train_added`` or, for the crossed partition, ``val_drug`` with a drug id in ``cell``)
to a temporary file next to the target and renames it into place: an interrupted or
failing command never leaves a half-written plan.
"""

from __future__ import annotations

import json
import os
import time

from hbl_mpi.core.atomic import replace_file
from hbl_mpi.core.errors import InputError
from hbl_mpi.core.output_guard import check_outputs

# flag -> config key; each given flag becomes a ``--set key=value`` override
FLAGS = {
    "data": "data", "n": "n", "s": "s", "order": "order", "seed": "seed",
    "partition": "partition", "holdout_fraction": "holdout_fraction",
}


def configure(p) -> None:
    p.add_argument("config", nargs="?", help="optional TOML config (the same file `run` takes)")
    p.add_argument("--data", help="input HDF5 file (CANDLE Uno format)")
    p.add_argument("--n", type=int, help="children per node, >= 2 (default 4)")
    p.add_argument("--s", type=int, help="stages, >= 1 (default 3)")
    p.add_argument("--order", choices=("shuffled", "ordered"), help="id order before cutting (default shuffled)")
    p.add_argument("--seed", type=int, help="plan seed: id shuffle and holdout rows (default 0)")
    p.add_argument("--partition", choices=("cells", "cells+drugs", "drugs"),
                   help="hold out cell lines, crossed cell x drug blocks, or drugs (default cells)")
    p.add_argument("--holdout-fraction", dest="holdout_fraction", type=float,
                   help="fraction of response rows held out as the common test set (default 0.1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (TOML value syntax), repeatable")
    p.add_argument("--out", help="write the plan as CSV (node,parent,stage,cell,role) to this file")
    p.add_argument("--check", action="store_true",
                   help="also verify the plan's invariants (slower: set operations per node)")


def _toml_value(value) -> str:
    """A Python scalar as a TOML value (JSON strings are valid TOML basic strings)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def settings(args):
    """The validated RunConfig the plan is built from (config, then --set, then flags)."""
    from hbl_mpi.core.config import load_config

    overrides = list(args.overrides)
    for flag, key in FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={_toml_value(value)}")
    given = {o.partition("=")[0].strip() for o in args.overrides}
    if args.config is None and args.data is None and "data" not in given:
        raise InputError("plan needs --data F.h5 (or a CONFIG.toml with a `data` key)")
    return load_config(args.config, overrides)


def check_out(path: str) -> None:
    """Fail on an unusable ``--out`` before reading any data."""
    target = os.path.abspath(path)
    folder = os.path.dirname(target)
    if os.path.isdir(target):
        raise InputError(f"--out {path!r} is a directory")
    if not os.path.isdir(folder):
        raise InputError(f"--out {path!r}: directory {folder!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"--out {path!r}: directory {folder!r} is not writable")


def write_csv_atomic(plan, path: str) -> int:
    """Write ``plan.csv`` via a temporary file in the same directory; returns the row count."""
    check_out(path)
    rows = []  # WriteFailed (nothing replaced) ends the command with exit 4 (__main__)
    replace_file(os.path.abspath(path), lambda tmp: rows.append(plan.write_csv(tmp)))
    return rows[0]


def format_summary(plan, build_s: float) -> list[str]:
    """Per stage: node count and mean validation / training cells (and val rows)."""
    spec = plan.spec
    lines = [
        f"plan: n={spec.n} s={spec.s} order={spec.order} seed={spec.seed} partition={spec.partition} "
        f"holdout_fraction={spec.holdout_fraction:g}",
        f"data: {len(plan.cell_ids):,} cells, {len(plan.drug_ids):,} drugs, {len(plan.holdout):,} rows "
        f"({int(plan.holdout.sum()):,} holdout test rows, in no node's train or val)",
        f"{'stage':>5} {'nodes':>7} {'mean val cells':>15} {'mean train cells':>17} {'mean val rows':>14}"
        + (f" {'mean val drugs':>15}" if spec.partition != "cells" else ""),
    ]
    for st in plan.stage_summary():
        lines.append(f"{st['stage']:>5} {st['nodes']:>7,} {st['mean_val_cells']:>15.2f} "
                     f"{st['mean_train_cells']:>17.2f} {st['mean_val_rows']:>14.1f}"
                     + (f" {st['mean_val_drugs']:>15.2f}" if "mean_val_drugs" in st else ""))
    lines.append(f"total {len(plan):,} nodes (root not counted); built in {build_s:.3f} s")
    return lines


def run(args) -> int:
    from hbl_mpi.data import read_data
    from hbl_mpi.tree.invariants import check_invariants
    from hbl_mpi.tree.plan import PlanSpec, plan_for

    cfg = settings(args)
    if args.out:
        check_out(args.out)
        check_outputs([args.out], [cfg.data, args.config])
    t0 = time.perf_counter()
    dataset = read_data(cfg.data)
    t1 = time.perf_counter()
    plan = plan_for(dataset, PlanSpec.from_config(cfg))
    t2 = time.perf_counter()
    print(f"read {cfg.data} in {t1 - t0:.2f} s")
    for line in format_summary(plan, t2 - t1):
        print(line)
    if args.check:
        try:
            check_invariants(plan)
        except AssertionError as e:  # a bug in the planner, not bad input: say so loudly
            raise RuntimeError(f"plan invariant violated: {e}") from e
        print(f"invariants hold ({time.perf_counter() - t2:.2f} s)")
    if args.out:
        rows = write_csv_atomic(plan, args.out)
        print(f"wrote {args.out} ({rows:,} rows)")
    return 0
