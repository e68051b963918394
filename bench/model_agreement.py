"""Is the resist ranking a property of the data or of one network? Several runs of different
models on the same cells: each run's detection of the planted cells (AUROC, the report's
default score) and how much their top-K suspect sets agree (Jaccard).

    python bench/model_agreement.py uno/results.h5 pathway/results.h5 cnn/results.h5 [--top 20]

The runs must share the cells and the planted truth (their data may differ in drug groups,
e.g. one with ``--smiles-onehot``). Nothing is tuned: each run's own default ranking.
Last stdout line: one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def main() -> None:
    from hbl_mpi.analysis.ranking import detection_metrics, rank_cells
    from hbl_mpi.store.results import read_results

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+")
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()
    runs, tops, out = {}, {}, {}
    truth = None
    for path in args.results:
        run = read_results(path)
        name = str(run.versions.get("model") or run.config.get("model"))
        ranking = rank_cells(run.cell_val, run.nodes, plan=run.plan)
        score = ranking.set_index("cell")["score"]
        if run.truth is None:
            raise SystemExit(f"{path}: no planted truth to score against")
        truth = run.truth if truth is None else truth
        if set(truth["cell"]) != set(run.truth["cell"]):
            raise SystemExit(f"{path}: another data set's planted cells")
        det = detection_metrics(score, run.truth).set_index("kind")
        tops[name] = set(ranking.sort_values("rank")["cell"].astype(str).head(args.top))
        runs[name] = {"path": path, "nodes": int(len(run.nodes)), "parameters": run.versions.get("model_parameters"),
                      "auroc": float(det.loc["all", "auroc"]),
                      "auroc_by_kind": {k: float(v) for k, v in det["auroc"].items() if k != "all"},
                      "precision_at_k": float(det.loc["all", "precision_at_k"])}
    pairs = {f"{a} | {b}": jaccard(tops[a], tops[b]) for a, b in itertools.combinations(tops, 2)}
    out = {"top": args.top, "runs": runs, f"jaccard_top{args.top}": pairs,
           f"common_top{args.top}": len(set.intersection(*tops.values()))}
    for name, r in runs.items():
        print(f"{name:<36} AUROC {r['auroc']:.3f}  P@k {r['precision_at_k']:.2f}  nodes {r['nodes']}")
    for pair, j in pairs.items():
        print(f"Jaccard top-{args.top}: {pair}: {j:.2f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
