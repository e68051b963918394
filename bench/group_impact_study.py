"""Group impact on synthetic data with a known harmful lab (docs/findings/group-impact.md §3).

    python bench/group_impact_study.py --work /tmp/gi            # tree + group impact + drop check
    python bench/group_impact_study.py --work /tmp/gi --no-drop  # tree + group impact only

1. data: the ``small`` synthetic preset (``--cells`` x ``--drugs``, ``--seed``, no planted
   single-cell anomalies); cells dealt at random into ``--labs`` labs (metadata ``lab``);
   the labels of lab ``--bad`` replaced by ``1 - y`` (another, inverted assay);
2. the tree: ``groups = "lab"``, serial driver; ``group_impact.csv`` via ``report``;
3. drop check: ``curate --drop-group lab=lab_BAD`` writes the data without the lab; one Uno
   (bench/impact_study.py's ``Retrainer``) is trained on every cell and on the curated
   file's cells, ``--seeds`` seeds each, and scored on the holdout rows of the clean labs.

The last stdout line is one JSON object with every figure (row-epochs and seconds included).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
import benchkit  # noqa: E402

TREE = """data = "{data}"
groups = "lab"
n = {n}
s = {s}
strategy = "EXP2"
epochs = {epochs}
patience = {patience}
batch_size = 256
learning_rate = 0.001
model = "small"
inherit = "{inherit}"
batch_order = "{batch_order}"
seed = {seed}
threads = 1
"""


def log(msg: str) -> None:
    print(f"[group_impact_study {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_data(path: str, cells: int, drugs: int, seed: int, labs: int, bad: int):
    from hbl_mpi.data import synthesize, write_uno

    ds = synthesize("small", seed=seed, cells=cells, drugs=drugs, anomaly_fraction=0.0)
    rng = np.random.default_rng([seed, 0x1AB])
    lab_of_cell = np.empty(ds.n_cells, dtype=np.int64)
    lab_of_cell[rng.permutation(ds.n_cells)] = np.arange(ds.n_cells) % labs
    label = ds.label.copy()
    bad_rows = lab_of_cell[np.asarray(ds.cell_index, dtype=np.int64)] == bad
    label[bad_rows] = 1.0 - label[bad_rows]  # the other, inverted assay
    meta = pd.DataFrame({"cell": ds.cell_ids.astype(str), "lab": [f"lab_{i}" for i in lab_of_cell]})
    ds = dataclasses.replace(ds, label=label, cell_metadata=meta)
    write_uno(ds, path, seed=seed)
    return ds, meta, int(bad_rows.sum())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=None, help="scratch folder (default: <temp dir>/hbl_group_impact_study)")
    ap.add_argument("--cells", type=int, default=180)
    ap.add_argument("--drugs", type=int, default=48)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--labs", type=int, default=6)
    ap.add_argument("--bad", type=int, default=3)
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--s", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--inherit", default="best")
    ap.add_argument("--batch-order", default="node")
    ap.add_argument("--replicates", type=int, default=1,
                    help="replicate trees (tree seeds SEED .. SEED+R-1); report combines >= 3 of them")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--retrain-epochs", type=int, default=20)
    ap.add_argument("--no-drop", action="store_true")
    args = ap.parse_args(argv)
    if args.work is None:
        args.work = benchkit.default_work("group_impact_study")
    benchkit.say(__file__, f"working in {args.work}")
    os.makedirs(args.work, exist_ok=True)
    out: dict = {"args": vars(args)}
    data = os.path.join(args.work, "labs.h5")
    ds, meta, n_bad_rows = make_data(data, args.cells, args.drugs, args.seed, args.labs, args.bad)
    bad = f"lab_{args.bad}"
    log(f"data: {ds.n_cells} cells, {ds.n_rows} rows; {bad}: {n_bad_rows} rows inverted")
    from hbl_mpi.analysis import paper_stats as A
    from hbl_mpi.store.results import read_results

    results, out["trees"] = [], []
    for i in range(args.replicates):
        tree_seed = args.seed + i
        cfg_path = os.path.join(args.work, f"tree{i or ''}.toml")
        with open(cfg_path, "w") as f:
            f.write(TREE.format(data=data, n=args.n, s=args.s, epochs=args.epochs, seed=tree_seed,
                               patience=args.patience, inherit=args.inherit, batch_order=args.batch_order))
        tree = os.path.join(args.work, f"tree{i or ''}")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "hbl_mpi", "run", cfg_path, "--serial", "--out", tree, "--overwrite"],
                       check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        run = read_results(os.path.join(tree, "results.h5"))
        tot = A.compute_totals(run.nodes)
        s1 = run.nodes[run.nodes["stage"] == 1]
        out["trees"].append({"seed": tree_seed, "nodes": tot["nodes_done"], "epochs": tot["epochs"],
                             "row_epochs": tot["row_epochs"], "train_seconds": tot["train_hours"] * 3600,
                             "wall_seconds": wall,
                             "stage1_epochs": dict(zip(s1["node"].astype(str), s1["epochs_run"].astype(int)))})
        log(f"tree {i}: {out['trees'][-1]}")
        results.append(os.path.join(tree, "results.h5"))
    out["tree"] = {k: sum(t[k] for t in out["trees"]) for k in ("nodes", "epochs", "row_epochs", "train_seconds",
                                                                  "wall_seconds")}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hbl_mpi", "report", *results, "--out",
                    os.path.join(args.work, "report")], check=True, stdout=subprocess.DEVNULL)
    out["report_seconds"] = time.perf_counter() - t0
    gi = pd.read_csv(os.path.join(args.work, "report", "group_impact.csv"))
    print(gi.to_string(index=False), flush=True)
    out["group_impact"] = gi.to_dict("records")
    clean = gi[gi["value"] != bad]
    out["prediction"] = {"bad_flagged": bool((gi.loc[gi["value"] == bad, "z"] > 3).all()),
                         "no_clean_beyond_3sd": bool((clean["z"].abs() <= 3).all())}
    log(f"prediction: {out['prediction']}")
    if not args.no_drop:
        out["drop"] = drop_check(args, data, ds, meta, bad)
    print(json.dumps(out, default=float))
    return 0


def drop_check(args, data: str, ds, meta: pd.DataFrame, bad: str) -> dict:
    from impact_study import Retrainer

    from hbl_mpi.core.config import RunConfig
    from hbl_mpi.data import read_uno

    cur = os.path.join(args.work, "without_bad.h5")
    subprocess.run([sys.executable, "-m", "hbl_mpi", "curate", "--data", data, "--drop-group", f"lab={bad}",
                    "--out", cur], check=True, stdout=subprocess.DEVNULL)
    kept = sorted(map(str, read_uno(cur).cell_ids))
    everyone = sorted(map(str, ds.cell_ids))
    clean = sorted(meta.loc[meta["lab"] != bad, "cell"])
    assert kept == clean, "curate --drop-group kept other cells than the clean labs"
    cfg = RunConfig(data=data, seed=args.seed, model="small", batch_size=256, learning_rate=1e-3)
    rt = Retrainer(ds, cfg, args.retrain_epochs, 3)
    test = rt.rows_of(clean, holdout=True)
    rows = []
    for seed in range(args.seeds):
        a = rt.fit(everyone, seed, {"clean_test": test})
        b = rt.fit(kept, seed, {"clean_test": test})
        rows.append({"seed": seed, "all": a["clean_test"], "without": b["clean_test"],
                     "change": b["clean_test"] / a["clean_test"] - 1.0})
        log(f"drop check seed {seed}: {rows[-1]}")
    ch = np.array([r["change"] for r in rows])
    return {"per_seed": rows, "mean_change": float(ch.mean()), "sd_change": float(ch.std(ddof=1)) if len(ch) > 1
            else float("nan"), "test_rows": int(len(test)), "row_epochs": rt.row_epochs, "seconds": rt.seconds,
            "fits": rt.fits}


if __name__ == "__main__":
    sys.exit(main())
