"""Benchmark the cell diagnosis (``hbl_mpi/diagnosis.py``) on synthetic data with planted anomalies.

One call = one or more seeds: for each, generate the data (``data synth``), train the tree
(``mpiexec -n RANKS python -m hbl_mpi run``, the demo settings: N = 4, S = 3, EXP2, E = 20),
diagnose every ranked cell and score the diagnosis against the planted truth:

* ``kind_accuracy``: among the planted cells ranked in the top k (k = number of planted
  cells), the share whose diagnosis names the planted kind (target >= 0.8);
* ``partner_accuracy``: among the planted swaps ranked in the top k, the share whose
  ``likely_identity`` is the true partner (target >= 0.7); also over all planted swaps;
* ``clean_error_rate``: share of the clean cells diagnosed as an error kind (label_noise,
  shift or swap; target < 0.1).

The last stdout line is one JSON object (per seed and pooled over the seeds).

    python bench/diagnosis_study.py --work /tmp/diag_bench --seeds 9301 9302 9303
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchkit  # noqa: E402  (also puts the checkout first on sys.path)

ERROR_KINDS = ("label_noise", "shift", "swap")
#: docs/findings/diagnosis.md's seeds for this benchmark (its command: --seeds 9301 9302 9303)
DEFAULT_SEEDS = [9301, 9302, 9303]


def train(work: str, seed: int, ranks: int, synth: list[str], rerun: bool) -> tuple[str, str]:
    d = os.path.join(work, f"s{seed}")
    os.makedirs(d, exist_ok=True)
    data = os.path.join(d, "data.h5")
    results = os.path.join(d, "run", "results.h5")
    if not os.path.exists(data):
        subprocess.run([sys.executable, "-m", "hbl_mpi", "data", "synth", "--preset", "small", "--seed", str(seed),
                        "--out", data, *synth], check=True, stdout=subprocess.DEVNULL)
    if rerun or not os.path.exists(results):
        here = os.path.dirname(os.path.abspath(__file__))
        cfg = os.path.join(here, "..", "jobs", "demo.toml")
        t0 = time.perf_counter()
        mpiexec = benchkit.mpiexec_path() or "mpiexec"
        subprocess.run([mpiexec, "-n", str(ranks), sys.executable, "-m", "hbl_mpi", "run", cfg,
                        "--set", f'data="{os.path.abspath(data)}"', "--set", f"seed={seed}",
                        "--out", os.path.join(d, "run"), "--overwrite"], check=True, stdout=subprocess.DEVNULL)
        print(f"[bench] seed {seed}: tree trained in {time.perf_counter() - t0:.0f} s", flush=True)
    return data, results


def swap_partners(data: str) -> dict[str, str]:
    """The planted swap pairs, from the data file's generator metadata."""
    from hbl_mpi.data.uno_h5 import _Store

    store = _Store(data)
    try:
        attrs = store.attrs("model") if hasattr(store, "attrs") else {}
    finally:
        store.close()
    meta = json.loads(attrs.get("hbl_meta", "{}") or "{}").get("meta", {})
    out = {}
    for a, b in meta.get("swap_pairs", []):
        out[a], out[b] = b, a
    return out


def score(diag: pd.DataFrame, ranking: pd.DataFrame, truth: pd.DataFrame, partners: dict[str, str]) -> dict:
    kinds = dict(zip(truth["cell"].astype(str), truth["kind"].astype(str)))
    k = len(kinds)
    top = set(ranking.sort_values("rank").head(k)["cell"].astype(str))
    d = diag.set_index("cell")
    planted_top = [c for c in kinds if c in top]
    right = [c for c in planted_top if d.loc[c, "diagnosis"] == kinds[c]]
    swaps_top = [c for c in planted_top if kinds[c] == "swap"]
    swaps_all = [c for c in kinds if kinds[c] == "swap"]
    pt = [c for c in swaps_top if d.loc[c, "likely_identity"] == partners.get(c)]
    pa = [c for c in swaps_all if c in d.index and d.loc[c, "likely_identity"] == partners.get(c)]
    clean = [c for c in d.index if c not in kinds]
    clean_err = [c for c in clean if d.loc[c, "diagnosis"] in ERROR_KINDS]
    per_kind = {}
    for kind in sorted(set(kinds.values())):
        cs = [c for c in planted_top if kinds[c] == kind]
        per_kind[kind] = {"in_top_k": len(cs), "named": sum(d.loc[c, "diagnosis"] == kind for c in cs)}
    confusion = {c: f"{kinds[c]}->{d.loc[c, 'diagnosis']}" for c in planted_top if c not in right}
    return {"k": k, "planted_in_top_k": len(planted_top), "named_right": len(right),
            "kind_accuracy": len(right) / len(planted_top) if planted_top else None,
            "swaps_in_top_k": len(swaps_top), "partner_right_top_k": len(pt),
            "partner_accuracy": len(pt) / len(swaps_top) if swaps_top else None,
            "partner_right_all": len(pa), "swaps_all": len(swaps_all),
            "clean_cells": len(clean), "clean_as_error": len(clean_err),
            "clean_error_rate": len(clean_err) / len(clean) if clean else None,
            "clean_diagnoses": d.loc[clean, "diagnosis"].value_counts().to_dict(),
            "per_kind": per_kind, "misses": confusion}


def study(results: str, data: str) -> tuple[dict, pd.DataFrame]:
    from hbl_mpi.analysis import ranking as R
    from hbl_mpi.report.cells import diagnose_run
    from hbl_mpi.store.results import read_results

    run = read_results(results)
    ranking = R.rank_cells(run.cell_val, run.nodes, plan=run.plan)
    diag = diagnose_run(run, ranking)
    return score(diag, ranking, run.truth, swap_partners(data)), diag.merge(ranking[["cell", "rank"]], on="cell")


def parser() -> argparse.ArgumentParser:
    """The command line; with no arguments: seeds 9301 9302 9303 (docs/findings/diagnosis.md's), 3 ranks, under
    ``<temp dir>/hbl_diagnosis_study`` (trees already there are reused)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=benchkit.default_work("diagnosis_study"),
                   help="folder of the data sets and trees (default: <temp dir>/hbl_diagnosis_study)")
    p.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS,
                   help="synthetic data and run seeds (default: 9301 9302 9303)")
    p.add_argument("--ranks", type=int, default=3)
    p.add_argument("--synth", nargs="*", default=[], help="extra `data synth` flags, e.g. --cells 400")
    p.add_argument("--rerun", action="store_true")
    p.add_argument("--show", action="store_true", help="print the planted and top cells' evidence")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    benchkit.say(__file__, f"seeds {' '.join(map(str, args.seeds))} in {args.work} (one tree per seed, "
                           f"{args.ranks} ranks)")
    out, pooled = {}, {"planted_in_top_k": 0, "named_right": 0, "swaps_in_top_k": 0, "partner_right_top_k": 0,
                       "clean_cells": 0, "clean_as_error": 0}
    for seed in args.seeds:
        data, results = train(args.work, seed, args.ranks, args.synth, args.rerun)
        res, diag = study(results, data)
        out[str(seed)] = res
        for key in pooled:
            pooled[key] += res[key]
        if args.show:
            from hbl_mpi.store.results import read_results

            truth = read_results(results).truth
            kinds = dict(zip(truth["cell"], truth["kind"]))
            diag["planted"] = diag["cell"].map(kinds).fillna("")
            cols = ["rank", "cell", "planted", "diagnosis", "confidence", "likely_identity", "score", "bias_t",
                    "bias_share", "resid_pred_corr", "response_pred_corr", "identity_gain", "identity_fit", "best_fit_ratio",
                    "neighbour_coherence"]
            show = diag[(diag["planted"] != "") | (diag["rank"] <= 25)].sort_values("rank")[cols]
            print(show.to_string(index=False, float_format=lambda v: f"{v:.2f}"), flush=True)
        print(f"[bench] seed {seed}: {json.dumps(res)}", flush=True)
    pooled["kind_accuracy"] = pooled["named_right"] / max(pooled["planted_in_top_k"], 1)
    pooled["partner_accuracy"] = pooled["partner_right_top_k"] / max(pooled["swaps_in_top_k"], 1)
    pooled["clean_error_rate"] = pooled["clean_as_error"] / max(pooled["clean_cells"], 1)
    print(json.dumps({"seeds": out, "pooled": pooled}))


if __name__ == "__main__":
    main()
