"""``python -m hbl_mpi report RESULTS.h5 [more.h5 ...] [--out DIR] [--baselines]``.

Several results files = several epoch strategies side by side (labelled by each run's
``strategy``); the cell ranking averages the runs made on the same data. With
``--baselines`` the planted-anomaly detection is also scored for Isolation Forest and
K-fold out-of-fold residuals, which reads the run's data file and trains K models.
"""

from __future__ import annotations

import os


def configure(p) -> None:
    p.add_argument("results", nargs="+", help="results.h5 file(s) written by `run`")
    p.add_argument("--out", help="output directory (default: report/ next to the first results file)")
    p.add_argument("--baselines", action="store_true",
                   help="also score Isolation Forest and K-fold out-of-fold residuals (trains K models)")
    p.add_argument("--data", help="data file for the baselines (default: the run's `data`)")
    p.add_argument("--kfold", type=int, default=5, help="folds (by cell) of the residual baseline (default 5)")
    p.add_argument("--method", default=None, help="cell score (default: the measured best; see docs/findings/detection.md §2)")
    p.add_argument("--top", type=int, default=30, help="cells shown in the ranking figure and table")
    p.add_argument("--cells", type=int, default=20, help="top cells given a diagnosis page (default 20)")
    p.add_argument("--reference", help="a second screen (Uno HDF5, e.g. `data gdsc --source gdsc1`) to hold the "
                                       "ranking against: cross-screen agreement per cell")
    p.add_argument("--enrich-k", dest="enrich_k", default="20,50", metavar="K[,K...]",
                   help="top-k sizes of the metadata group tests in enrichment.csv (default 20,50)")


def run(args) -> int:
    from hbl_mpi.core.errors import InputError
    from hbl_mpi.core.output_guard import check_outputs
    from hbl_mpi.analysis.ranking import DEFAULT_METHOD, METHODS
    from hbl_mpi.report.build import write
    from hbl_mpi.report.drugs import build_report

    method = args.method or DEFAULT_METHOD
    if method not in METHODS:
        raise InputError(f"--method {method!r}: one of {', '.join(METHODS)}")
    if args.kfold < 2:
        raise InputError(f"--kfold must be >= 2; got {args.kfold}")
    if args.top < 1:
        raise InputError(f"--top must be >= 1; got {args.top}")
    if args.cells < 0:
        raise InputError(f"--cells must be >= 0; got {args.cells}")
    if args.reference is not None and not os.path.isfile(args.reference):
        raise InputError(f"--reference {args.reference!r} does not exist")
    enrich_k = parse_ks(args.enrich_k)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.results[0])), "report")
    inputs = [*args.results, args.data, args.reference]
    check_outputs([os.path.join(out, "report.html")], inputs)  # before the minutes of building
    rep = build_report(args.results, baselines=args.baselines, data=args.data, kfold=args.kfold, method=method,
                       top=args.top, reference=args.reference, cells=args.cells, enrich_k=enrich_k)
    check_outputs([os.path.join(out, name) for name in [*rep.files, "report.md", "report.html"]], inputs)
    paths = write(rep, out)
    print(f"[hbl_mpi] report: {len(paths)} files in {out}")
    print(f"[hbl_mpi] open {os.path.join(out, 'report.html')}")
    timed = {k: rep.summary[k] for k in ("enrichment_seconds", "group_diagnosis_seconds", "group_impact_seconds") if k in rep.summary}
    if timed:
        print("[hbl_mpi] " + ", ".join(f"{k.replace('_seconds', '').replace('_', ' ')} {v:.2f} s"
                                        for k, v in timed.items()))
    det = rep.summary.get("detection")
    if det is not None:
        for row in det[det["kind"] == "all"].itertuples(index=False):
            print(f"[hbl_mpi] {row.method}: AUROC {row.auroc:.3f}, AP {row.average_precision:.3f}, "
                  f"precision@{row.k} {row.precision_at_k:.3f}")
    return 0


def parse_ks(text: str) -> tuple[int, ...]:
    """``--enrich-k 20,50`` -> (20, 50); InputError (exit 2) for anything but positive integers."""
    from hbl_mpi.core.errors import InputError

    parts = [t.strip() for t in str(text).split(",") if t.strip()]
    try:
        ks = tuple(int(t) for t in parts)
    except ValueError:
        ks = ()
    if not ks or min(ks) < 1:
        raise InputError(f"--enrich-k {text!r}: expected positive integers separated by commas, e.g. 20,50")
    return tuple(sorted(set(ks)))
