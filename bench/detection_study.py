"""Measure every candidate cell score (and the baselines) on synthetic data sets.

This is how ``ranking.DEFAULT_METHOD`` was chosen and how the acceptance check was run
(docs/findings/detection.md). One call = one data set: generate it (``data synth`` with the given
seed and overrides), train an HBL tree on it (``mpiexec -n RANKS python -m hbl_mpi run``),
run the baselines (Isolation Forest x 2, K-fold OOF residuals, cleanlab) and write
``WORK/NAME/metrics.csv`` (one row per method and anomaly kind). ``--summary`` gathers
every ``metrics.csv`` under WORK into the tables of docs/findings/detection.md.

Training takes the heavy-run lock (``flock`` on /tmp/hbl_heavy.lock) so measurements on
the shared machine do not overlap; the timings in the CSV are then meaningful.

    python bench/detection_study.py --work /tmp/det --name d101 --seed 101
    python bench/detection_study.py --work /tmp/det --name d102 --seed 102 --synth cells=400
    python bench/detection_study.py --work /tmp/det --summary
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchkit  # noqa: E402  (also puts the checkout first on sys.path)
from hbl_mpi.report.build import markdown_table  # noqa: E402

LOCK = "/tmp/hbl_heavy.lock"


@contextmanager
def heavy_lock(enabled: bool = True):
    if not enabled:
        yield
        return
    with open(LOCK, "a") as f:
        t0 = time.monotonic()
        fcntl.flock(f, fcntl.LOCK_EX)
        waited = time.monotonic() - t0
        if waited > 1:
            print(f"[study] waited {waited:.0f} s for the heavy-run lock", flush=True)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def parse_kv(items: list[str]) -> dict:
    out = {}
    for it in items:
        k, _, v = it.partition("=")
        out[k.strip()] = v.strip()
    return out


def make_data(path: str, seed: int, synth: dict) -> None:
    if os.path.exists(path):
        return
    cmd = [sys.executable, "-m", "hbl_mpi", "data", "synth", "--seed", str(seed), "--out", path]
    flags = {"cells": "--cells", "drugs": "--drugs", "anomaly_fraction": "--anomaly-fraction",
             "anomaly_kinds": "--anomaly-kinds", "noise": "--noise", "density": "--density"}
    for k, v in synth.items():
        cmd += [flags[k], v]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def write_config(path: str, data: str, out: str, plan_seed: int, run: dict) -> None:
    cfg = {"data": data, "n": 4, "s": 3, "strategy": "EXP2", "epochs": 20, "patience": 3,
           "batch_size": 256, "learning_rate": 0.001, "model": "small", "inherit": "best",
           "seed": plan_seed, "threads": 1, "out": out}
    for k, v in run.items():
        cfg[k] = int(v) if v.lstrip("-").isdigit() else v
    with open(path, "w") as f:
        for k, v in cfg.items():
            f.write(f"{k} = {json.dumps(v)}\n")


def complete(results: str) -> bool:
    """A finished run: every node of the plan is in the nodes table (a killed run is not reused)."""
    from hbl_mpi.core.errors import InputError
    from hbl_mpi.store.results import read_results

    if not os.path.exists(results):
        return False
    try:
        r = read_results(results)
    except InputError:
        return False
    return r.plan is not None and set(r.plan["node"]) <= r.done_nodes()


def study_one(args) -> None:
    from hbl_mpi.analysis import paper_stats as A
    from hbl_mpi.analysis import ranking as R
    from hbl_mpi.analysis.baselines import run_baselines
    from hbl_mpi.store.results import read_results

    d = os.path.join(args.work, args.name)
    os.makedirs(d, exist_ok=True)
    data = os.path.join(d, "data.h5")
    synth = parse_kv(args.synth)
    run = parse_kv(args.run)
    make_data(data, args.seed, synth)
    out = os.path.join(d, "run")
    results = os.path.join(out, "results.h5")
    cfg_path = os.path.join(d, "run.toml")
    write_config(cfg_path, data, out, args.plan_seed if args.plan_seed is not None else args.seed, run)
    if not complete(results) or args.rerun:
        with heavy_lock(not args.no_lock):
            t0 = time.perf_counter()
            subprocess.run([benchkit.mpiexec_path() or "mpiexec", "-n", str(args.ranks), sys.executable, "-m", "hbl_mpi", "run", cfg_path,
                            "--overwrite"], check=True, stdout=subprocess.DEVNULL)
            print(f"[study] {args.name}: tree trained in {time.perf_counter() - t0:.0f} s", flush=True)
    if not complete(results):
        sys.exit(f"{results}: the run did not finish every node")
    r = read_results(results)
    parts = []
    t = R.cell_stage_table(r.cell_val, r.nodes)
    tot = A.compute_totals(r.nodes)
    for name, fn in R.METHODS.items():
        parts.append(R.detection_metrics(fn(t), r.truth).assign(
            method=f"HBL {name}", epochs=tot["epochs"], row_epochs=tot["row_epochs"],
            seconds=tot["train_hours"] * 3600))
    if r.plan is not None:
        parts.append(R.detection_metrics(R.train_added_blame(r.plan, r.nodes), r.truth).assign(
            method="HBL train_added_blame (evidence only)", epochs=tot["epochs"], row_epochs=tot["row_epochs"],
            seconds=tot["train_hours"] * 3600))
    base_csv = os.path.join(d, "baselines.csv")
    if not os.path.exists(base_csv) or args.rerun:
        with heavy_lock(not args.no_lock):
            bl = run_baselines(data, r.config, kfold=args.kfold, log=lambda *a: None)
        bparts = [R.detection_metrics(b.score, r.truth).assign(method=b.name, epochs=b.epochs,
                                                              row_epochs=b.row_epochs, seconds=b.seconds)
                  for b in bl]
        pd.concat(bparts, ignore_index=True).to_csv(base_csv, index=False)
    parts.append(pd.read_csv(base_csv))
    m = pd.concat(parts, ignore_index=True)
    kinds = ",".join(f"{k}:{v}" for k, v in r.truth["kind"].value_counts().sort_index().items())
    m.insert(0, "dataset", args.name)
    m.insert(1, "data", f"seed={args.seed} " + " ".join(f"{k}={v}" for k, v in synth.items()) + f" [{kinds}]")
    m.insert(2, "tree", f"N={r.config.get('n')} S={r.config.get('s')} {r.config.get('strategy')}")
    m.to_csv(os.path.join(d, "metrics.csv"), index=False)
    show = m[m["kind"] == "all"][["method", "auroc", "average_precision", "precision_at_k", "epochs", "seconds"]]
    print(f"[study] {args.name}: {m['data'].iloc[0]}, {m['tree'].iloc[0]}")
    print(show.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def md(w: pd.DataFrame) -> str:
    return markdown_table(w.round(3).reset_index())


def summary(args) -> None:
    files = sorted(glob.glob(os.path.join(args.work, "*", "metrics.csv")))
    if not files:
        benchkit.need_first(__file__, f"no metrics.csv under {args.work}: run `python bench/detection_study.py "
                                      f"--work {args.work} --name NAME --seed SEED` for each data set first")
    m = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    if args.only:
        m = m[m["dataset"].isin(args.only.split(","))]
    allk = m[m["kind"] == "all"]
    for metric in ("auroc", "average_precision", "precision_at_k"):
        w = allk.pivot_table(index="method", columns="dataset", values=metric, aggfunc="first")
        w["mean"] = w.mean(axis=1)
        w["min"] = w.drop(columns="mean").min(axis=1)
        print(f"\n### {metric}\n")
        print(md(w.sort_values("mean", ascending=False)))
    print("\n### data sets\n")
    print(markdown_table(m[["dataset", "data", "tree"]].drop_duplicates()))
    kind = m[m["kind"] != "all"].pivot_table(index="method", columns="kind", values="auroc", aggfunc="mean")
    print("\n### mean AUROC per anomaly kind (over the data sets that have it)\n")
    print(md(kind))


def parser() -> argparse.ArgumentParser:
    """The command line; with no arguments: data set ``d0`` (synthetic seed 0, the demo's tree settings,
    3 ranks) under ``<temp dir>/hbl_detection_study``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=benchkit.default_work("detection_study"),
                   help="folder of the data sets (default: <temp dir>/hbl_detection_study)")
    p.add_argument("--name", help="data set name (default: d<SEED>)")
    p.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    p.add_argument("--plan-seed", dest="plan_seed", type=int, default=None, help="run seed (default: --seed)")
    p.add_argument("--synth", nargs="*", default=[], help="data synth overrides, key=value")
    p.add_argument("--run", nargs="*", default=[], help="run config overrides, key=value (n, s, strategy, ...)")
    p.add_argument("--ranks", type=int, default=3)
    p.add_argument("--kfold", type=int, default=5)
    p.add_argument("--rerun", action="store_true")
    p.add_argument("--no-lock", dest="no_lock", action="store_true")
    p.add_argument("--summary", action="store_true")
    p.add_argument("--only", help="with --summary: comma-separated data set names")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.summary:
        summary(args)
    else:
        args.name = args.name or f"d{args.seed}"
        benchkit.say(__file__, f"data set {args.name} (seed {args.seed}) in {os.path.join(args.work, args.name)}")
        study_one(args)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
