"""``python -m hbl_mpi curate RESULTS.h5 --data DATA.h5 (--drop K | --keep K) [--by ...] --out OUT.h5``.

Acts on the ranking: writes an Uno-format copy of the data without the K most harmful
cells (``--drop``) or with only the K most beneficial (``--keep``: a small set for quick
prototype studies); for a ``partition = "drugs"`` run the unit is the drug (``units.py``), and beside it ``OUT.dropped.csv`` / ``OUT.kept.csv`` (cell, score,
impact, reason). The ordering (``--by``) is impact, resist (the ranking's score) or their
combination; the default was chosen by the point-removal study (docs/findings/impact.md §8.6, §8.9).
Everything is checked before anything is written: K in 1 .. cells - 1, the results made
from this very data (data checksum), the impact table present when the ordering needs it.

``curate --data DATA.h5 --drop-group COLUMN=VALUE --out OUT.h5`` (RESULTS optional) writes
the data without one metadata group (the cells whose ``COLUMN`` is ``VALUE``; ``NA`` = the
cells with no value), e.g. a group that ``group_impact.csv`` flags; ``OUT.dropped.csv``
lists them. The metadata is the data file's own, else the results' ``cell_metadata``.
``--out`` may never name an input.

Results that record no data checksum (older versions) are refused: the curated file would
be a copy of whatever data sits at the path, cut by another data set's ranking; ``--force``
curates them anyway, with a warning. A partial run (fewer cells ranked than the data has)
is curated with a warning naming both counts.
"""

from __future__ import annotations

import os
import sys


def configure(p) -> None:
    from hbl_mpi.analysis.curation import CURATE_BY, DEFAULT_CURATE_BY

    p.add_argument("results", nargs="?", help="results.h5 written by `run` on DATA (not needed by --drop-group)")
    p.add_argument("--data", required=True, help="the Uno-format data file the run trained on")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--drop", type=int, metavar="K",
                      help="leave out the K most harmful cells (drugs: a drugs-partition run)")
    mode.add_argument("--keep", type=int, metavar="K",
                      help="keep only the K most beneficial cells (drugs: a drugs-partition run)")
    mode.add_argument("--drop-group", dest="drop_group", metavar="COLUMN=VALUE",
                      help="leave out the cells of one cell-metadata group (NA: the cells with no value)")
    p.add_argument("--by", choices=CURATE_BY, default=DEFAULT_CURATE_BY,
                   help=f"ordering of the cells (default {DEFAULT_CURATE_BY}: measured, docs/findings/impact.md §8)")
    p.add_argument("--out", required=True, help="output Uno-format .h5 file")
    p.add_argument("--force", action="store_true",
                   help="curate results that record no data checksum (older versions; a warning names the risk)")


def csv_path(out: str, mode: str) -> str:
    """``cur.h5`` -> ``cur.dropped.csv`` / ``cur.kept.csv``."""
    stem = out[:-3] if out.endswith(".h5") else out
    return f"{stem}.{'dropped' if mode == 'drop' else 'kept'}.csv"


def run(args) -> int:
    from hbl_mpi.core.atomic import WriteFailed, replace_text
    from hbl_mpi.data import load_dataset
    from hbl_mpi.analysis.curation import curate_selection
    from hbl_mpi.data import write_uno
    from hbl_mpi.core.errors import InputError
    from hbl_mpi.analysis.impact import add_impact, run_impact
    from hbl_mpi.analysis.ranking import rank_cells
    from hbl_mpi.analysis.units import to_unit, unit_view
    from hbl_mpi.report.cells import diagnose_run, with_diagnosis
    from hbl_mpi.store.provenance import check_same_data
    from hbl_mpi.store.results import read_results

    if getattr(args, "drop_group", None) is not None:
        return _drop_group(args)
    if args.results is None:
        raise InputError("curate --drop/--keep needs RESULTS (the results.h5 of a run on DATA)")
    mode, k = ("drop", args.drop) if args.drop is not None else ("keep", args.keep)
    if k < 1:
        raise InputError(f"--{mode} K must be >= 1; got {k}")
    out = _check_out(args, mode)
    full = read_results(args.results)
    unit = full.unit  # a drugs-partition run curates drugs
    run_ = unit_view(full)
    ds = load_dataset(args.data)
    if not run_.data_checksum and not args.force:
        raise InputError(f"curate: {args.results!r} records no data checksum (written by an older version): it cannot "
                         f"be verified that {args.data!r} is the data it ranked; add --force to curate anyway")
    check_same_data(run_.data_checksum, str(run_.config.get("data") or ""), args.data, ds.checksum, who="curate",
                    results=args.results, remedy="give the data file the run trained on")
    ranking = rank_cells(run_.cell_val, run_.nodes, plan=run_.plan)
    if args.by != "resist":
        result = run_impact(run_)
        if result is None:
            raise InputError(f"{args.results!r} has no {unit}_test table (written before impact existed); "
                             "use --by resist or run again")
        ranking = add_impact(ranking, result)
    ranking = with_diagnosis(ranking, diagnose_run(run_, ranking))  # the reason names what is wrong
    n = len(ranking)
    if k >= n:
        raise InputError(f"--{mode} K must be < the number of ranked {unit}s ({n}); got {k}")
    n_units = ds.n_drugs if unit == "drug" else ds.n_cells
    if n < n_units:  # a partial run (exit 3, or stopped): "K of n" would read as K of the whole data
        unranked = n_units - n
        print(f"hbl_mpi: warning: {args.results!r} ranks {n} of the data's {n_units} {unit}s (a partial run?); "
              f"the {unranked} unranked {unit}s are " + ("kept unjudged" if mode == "drop" else "left out"),
              file=sys.stderr, flush=True)
    sel = curate_selection(ranking, args.by, k, mode)
    chosen = set(sel["cell"])
    ids = ds.drug_ids if unit == "drug" else ds.cell_ids
    keep = [c for c in ids.astype(str) if (c in chosen) == (mode == "keep")]
    sub = ds.subset_drugs(keep) if unit == "drug" else ds.subset_cells(keep)
    sel = to_unit(sel, unit)
    table = csv_path(out, mode)
    try:
        write_uno(sub, out, seed=int(run_.config.get("seed", 0) or 0))
        replace_text(table, sel.to_csv(index=False))
    except WriteFailed as e:
        raise InputError(f"cannot write {e.path!r}{': disk full' if e.disk_full else ''}") from None
    left = sub.n_drugs if unit == "drug" else sub.n_cells
    print(f"[hbl_mpi] curate: {mode} {k} of {n} ranked {unit}s ({n_units} in the data) by {args.by}: {left} {unit}s, "
          f"{sub.n_rows} rows -> {out}")
    print(f"[hbl_mpi] curate: the {k} {'dropped' if mode == 'drop' else 'kept'} {unit}s -> {table}")
    return 0


def _check_out(args, mode: str) -> str:
    """The absolute --out, refused when its folder is missing, it is a folder, or it or its
    CSV resolves to an input or lies in a live run's OUT (``core.output_guard``, the one rule)."""
    from hbl_mpi.core.errors import InputError
    from hbl_mpi.core.output_guard import check_outputs

    out = os.path.abspath(args.out)
    if not os.path.isdir(os.path.dirname(out)):
        raise InputError(f"output directory {os.path.dirname(out)!r} does not exist")
    if os.path.isdir(out):
        raise InputError(f"--out {args.out!r} is a directory")
    check_outputs([args.out, csv_path(out, mode)], [p for p in (args.results, args.data) if p])
    return out


def _drop_group(args) -> int:
    """``--drop-group COLUMN=VALUE``: the data without that group, and OUT.dropped.csv."""
    from hbl_mpi.analysis.curation import group_selection
    from hbl_mpi.core.atomic import WriteFailed, replace_text
    from hbl_mpi.core.errors import InputError
    from hbl_mpi.data import load_dataset, write_uno
    from hbl_mpi.store.provenance import check_same_data
    from hbl_mpi.store.results import read_results

    out = _check_out(args, "drop")
    ds = load_dataset(args.data)
    meta, seed = ds.cell_metadata, 0
    if args.results is not None:
        run_ = read_results(args.results)
        check_same_data(run_.data_checksum, str(run_.config.get("data") or ""), args.data, ds.checksum,
                        who="curate", results=args.results, remedy="give the data file the run trained on")
        meta = meta if meta is not None else run_.cell_metadata
        seed = int(run_.config.get("seed", 0) or 0)
    sel = group_selection(meta, ds.cell_ids, args.drop_group)
    chosen = set(sel["cell"])
    sub = ds.subset_cells([c for c in ds.cell_ids.astype(str) if c not in chosen])
    table = csv_path(out, "drop")
    try:
        write_uno(sub, out, seed=seed)
        replace_text(table, sel.to_csv(index=False))
    except WriteFailed as e:
        raise InputError(f"cannot write {e.path!r}{': disk full' if e.disk_full else ''}") from None
    print(f"[hbl_mpi] curate: drop group {args.drop_group} ({len(chosen)} of {ds.n_cells} cells): "
          f"{sub.n_cells} cells, {sub.n_rows} rows -> {out}")
    print(f"[hbl_mpi] curate: the {len(chosen)} dropped cells -> {table}")
    return 0
