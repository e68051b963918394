"""Adaptive expansion against full trees and K-fold OOF: detection quality vs compute.

One call = one data set with a finished *full* tree (``expand = full``) at the deepest S:

* full trees at S' = 1..S are the full run's nodes of stage <= S' (under EXP2 a node's
  epoch budget does not depend on S, and a node's numbers depend only on its ancestors,
  so these are exactly the smaller runs' nodes);
* adaptive runs at each budget are the full run's nodes that the adaptive rule creates,
  found by replaying the rule's rounds over the full run's results
  (``growth.regrow``, the code a ``--restart`` uses). A live adaptive run trains exactly
  these nodes with the same numbers (tests/test_expansion.py checks it bit for bit on CPU
  against a full run); ``--live BUDGET`` runs one live as well and compares;
* K-fold OOF residuals at each K, and repeated 5-fold (fresh fold cuts) with as many
  repeats as match each adaptive run's row-epochs (epochs run x training rows).

Each is scored with ``ranking.detection_metrics`` against the planted truth (all
kinds): AUROC, average precision, precision@k (k = planted cells). Compute is given
as planned and as run row-epochs. The last stdout line is one JSON object.

    python bench/adaptive_study.py --results FULL/results.h5 --data DATA.h5 --out study.json
    python bench/adaptive_study.py --summary study1.json study2.json --plot docs/img/adaptive_study.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import benchkit  # noqa: E402
from hbl_mpi.analysis.baselines import config_from_dict, kfold_residuals, out_of_fold  # noqa: E402
from hbl_mpi.adaptive.growth import adaptive_plan, regrow  # noqa: E402
from hbl_mpi.tree.plan import PlanSpec, plan_for  # noqa: E402
from hbl_mpi.analysis.ranking import DEFAULT_METHOD, detection_metrics, rank_cells  # noqa: E402
from hbl_mpi.store.results import RunTables, read_results  # noqa: E402


def load(path: str) -> tuple[RunTables, pd.DataFrame, dict]:
    """The full tree's results (the schema's one reader), its planted truth and config."""
    run = read_results(path)
    if run.truth is None:
        raise SystemExit(f"{path!r} has no planted truth: the study scores against it")
    return run, run.truth, run.config


def score_tree(run: RunTables, keep: set[str], truth: pd.DataFrame, all_cells) -> dict:
    nodes = run.nodes[run.nodes["node"].isin(keep)]
    cv = run.cell_val[run.cell_val["node"].isin(keep)]
    ranking = rank_cells(cv, nodes, method=DEFAULT_METHOD)
    m = detection_metrics(ranking.set_index("cell")["score"], truth, cells=all_cells)
    row = m[m["kind"] == "all"].iloc[0]
    done = nodes[nodes["status"] == "done"]
    deepest = ranking.set_index("cell")["stage"] if "stage" in ranking else pd.Series(dtype=float)
    planted = set(truth["cell"].astype(str))
    s_max = int(done["stage"].max()) if len(done) else 0
    return {"nodes": int(len(done)), "auroc": float(row["auroc"]), "ap": float(row["average_precision"]),
            "p_at_k": float(row["precision_at_k"]), "k": int(row["k"]),
            "row_epochs_planned": float((done["epochs_planned"] * done["n_train_rows"]).sum()),
            "row_epochs_run": float((done["epochs_run"] * done["n_train_rows"]).sum()),
            "epochs_run": int(done["epochs_run"].sum()),
            "planted_at_deepest_stage": int(sum(1 for c, s in deepest.items() if c in planted and s == s_max)),
            "max_stage": s_max}


def replay(run: RunTables, ds, cfg, budget: float, rule: dict) -> set[str]:
    acfg = dataclasses.replace(cfg, expand="adaptive", expand_budget=budget, **rule)
    seed, exp = adaptive_plan(plan_for(ds, PlanSpec.from_config(acfg)), acfg)
    regrow(seed, exp, run)
    return set(seed.trained_nodes())


def metrics_of(score: pd.Series, truth, all_cells) -> dict:
    m = detection_metrics(score, truth, cells=all_cells)
    row = m[m["kind"] == "all"].iloc[0]
    return {"auroc": float(row["auroc"]), "ap": float(row["average_precision"]),
            "p_at_k": float(row["precision_at_k"])}


def study(args) -> dict:
    import torch

    from hbl_mpi.data import read_uno

    torch.set_num_threads(1)
    run, truth, config = load(args.results)
    cfg = config_from_dict(config)
    ds = read_uno(args.data)
    all_cells = ds.cell_ids.astype(str)
    rule = dict(kv.split("=", 1) for kv in args.rule)
    rule = {f"expand_{k}": (v if k == "score" else int(v)) for k, v in rule.items()}
    out = {"data": args.data, "results": args.results, "s": cfg.s, "n": cfg.n, "cells": int(ds.n_cells),
           "planted": int(len(truth)), "rule": rule, "rows": []}
    full_planned = None
    for s in range(1, cfg.s + 1):
        keep = set(run.nodes.loc[run.nodes["stage"] <= s, "node"].astype(str))
        r = {"method": f"full S={s}", "kind": "full", "s": s, **score_tree(run, keep, truth, all_cells)}
        out["rows"].append(r)
        full_planned = r["row_epochs_planned"]
        print(json.dumps(r), flush=True)
    for b in args.budgets:
        t0 = time.perf_counter()
        keep = replay(run, ds, cfg, b, rule)
        r = {"method": f"adaptive {b:g}", "kind": "adaptive", "budget": b,
             "replay_s": time.perf_counter() - t0, **score_tree(run, keep, truth, all_cells)}
        r["fraction_of_full_planned"] = r["row_epochs_planned"] / full_planned
        out["rows"].append(r)
        print(json.dumps(r), flush=True)
    if args.no_baselines:
        return out
    quiet = (lambda m: None)
    planned_of = lambda oof: float(sum(cfg.epoch_strategy.budget(1, cfg.s) * f["train_rows"] for f in oof.folds))

    def kfold_row(k: int, oof) -> dict:
        return {"method": f"K-fold OOF K={k}", "kind": "kfold", "k_folds": k, "repeats": 1,
                "row_epochs_run": oof.row_epochs, "row_epochs_planned": planned_of(oof),
                "epochs_run": oof.epochs, "seconds": oof.seconds,
                **metrics_of(kfold_residuals(oof, k).score, truth, all_cells)}

    def emit(r: dict) -> None:
        out["rows"].append(r)
        print(json.dumps(r), flush=True)
        if args.out:  # partial results survive an interrupted study
            from hbl_mpi.core.atomic import replace_text

            replace_text(args.out, json.dumps(out, indent=1))

    # K = 5 first; repeated 5-fold reuses it as its first cut and adds fresh cuts until it has
    # spent each adaptive run's row-epochs (or --max-repeats); then the other K
    first = out_of_fold(ds, cfg, 5, log=quiet)
    emit(kfold_row(5, first))
    targets = sorted(r["row_epochs_run"] for r in out["rows"] if r["kind"] == "adaptive")
    scores, spent, planned, epochs = [first.cell_mse], [first.row_epochs], [planned_of(first)], [first.epochs]
    for t in targets:
        while sum(spent) < t and len(spent) < args.max_repeats:
            oof = out_of_fold(ds, cfg, 5, log=quiet, fold_seed=cfg.seed * 1000 + len(spent))
            scores.append(oof.cell_mse)
            spent.append(oof.row_epochs)
            planned.append(planned_of(oof))
            epochs.append(oof.epochs)
        n = len(spent)
        if n > 1 and abs(sum(spent[:-1]) - t) < abs(sum(spent) - t):
            n -= 1  # the nearer of the two repeat counts around the target
        mean = pd.concat(scores[:n], axis=1).mean(axis=1)
        emit({"method": f"repeated 5-fold x{n}", "kind": "repeated_kfold", "repeats": n,
              "matches_row_epochs": t, "row_epochs_run": float(sum(spent[:n])),
              "row_epochs_planned": float(sum(planned[:n])), "epochs_run": int(sum(epochs[:n])),
              **metrics_of(mean, truth, all_cells)})
    for k in [k for k in args.kfold if k != 5]:
        emit(kfold_row(k, out_of_fold(ds, cfg, k, log=quiet)))
    return out


def summary(paths: list[str], plot: str | None) -> dict:
    runs = [json.load(open(p)) for p in paths]
    lines = []
    for run in runs:
        name = os.path.basename(run["data"])
        lines.append(f"\n{name}: {run['cells']} cells, {run['planted']} planted, N = {run['n']}, S = {run['s']}\n")
        lines.append("| method | nodes | row-epochs run | planned (x full S) | AUROC | AP | P@k |")
        lines.append("|---|---|---|---|---|---|---|")
        full = next(r for r in run["rows"] if r["method"] == f"full S={run['s']}")
        for r in run["rows"]:
            frac = r["row_epochs_planned"] / full["row_epochs_planned"]
            lines.append(f"| {r['method']} | {r.get('nodes', '')} | {r['row_epochs_run']:.3g} | {frac:.3f} | "
                         f"{r['auroc']:.3f} | {r['ap']:.3f} | {r['p_at_k']:.3f} |")
    print("\n".join(lines))
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, len(runs), figsize=(5.5 * len(runs), 7.5), squeeze=False)
        style = {"full": ("o-", "full tree S=1..5"), "adaptive": ("s-", "adaptive (budgets)"),
                 "kfold": ("^-", "K-fold OOF (K=5,10,20)"), "repeated_kfold": ("v--", "repeated 5-fold")}
        for j, run in enumerate(runs):
            for i, metric in enumerate(("ap", "p_at_k")):
                ax = axes[i][j]
                for kind, (fmt, label) in style.items():
                    rows = sorted([r for r in run["rows"] if r["kind"] == kind], key=lambda r: r["row_epochs_run"])
                    if rows:
                        ax.plot([r["row_epochs_run"] for r in rows], [r[metric] for r in rows], fmt, label=label)
                ax.set_xscale("log")
                ax.set_xlabel("row-epochs run (epochs x training rows)")
                ax.set_ylabel("average precision" if metric == "ap" else "precision@k (k = planted)")
                ax.set_title(f"{os.path.basename(run['data'])}: {'AP' if metric == 'ap' else 'P@k'}")
                ax.grid(alpha=0.3)
                if i == 0 and j == 0:
                    ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(plot, dpi=110)
    return {"summary": [{"data": os.path.basename(r["data"]), "rows": r["rows"]} for r in runs]}


#: what to run before the study: a finished full tree and its data (docs/findings/adaptive.md §10's commands)
RUN_FIRST = ("needs a finished full tree and its data: run `python -m hbl_mpi data synth --seed 7101 --cells 1024 "
             "--drugs 32 --out data.h5` and `mpiexec -n 3 python -m hbl_mpi run --set data=data.h5 --set n=4 "
             "--set s=5 --set strategy=EXP2 --out full` first (docs/findings/adaptive.md §10), then give --results "
             "full/results.h5 --data data.h5")


def parser() -> argparse.ArgumentParser:
    """The command line; with no arguments it says which tree to train first (the study reads one)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", help="a full tree's results.h5")
    ap.add_argument("--data", help="its data file")
    ap.add_argument("--budgets", type=lambda t: [float(x) for x in t.split(",")], default=[0.0625, 0.125, 0.25])
    ap.add_argument("--kfold", type=lambda t: [int(x) for x in t.split(",")], default=[5, 10, 20])
    ap.add_argument("--rule", nargs="*", default=[], help="expand_* overrides without the prefix: full_stages=1")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--max-repeats", type=int, default=12, help="repeated 5-fold: at most this many cuts")
    ap.add_argument("--out", help="write the rows as JSON here")
    ap.add_argument("--summary", nargs="*", help="study JSON files to tabulate")
    ap.add_argument("--plot", help="with --summary: PNG of AP and P@k against row-epochs")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    for path in (*(args.summary or ()), args.results, args.data):
        if path and not os.path.exists(path):
            benchkit.need_first(__file__, f"{path} does not exist; " + RUN_FIRST)
    if not args.summary and not (args.results and args.data):
        benchkit.need_first(__file__, RUN_FIRST)
    if args.summary:
        res = summary(args.summary, args.plot)
        print(json.dumps({"files": len(args.summary)}))
        return
    res = study(args)
    if args.out:
        from hbl_mpi.core.atomic import replace_text

        replace_text(args.out, json.dumps(res, indent=1))
    print(json.dumps({"rows": [{k: r[k] for k in ("method", "ap", "p_at_k", "row_epochs_run")}
                               for r in res["rows"]]}))


if __name__ == "__main__":
    main()
