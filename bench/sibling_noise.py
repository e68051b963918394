"""How noisy are the impact estimator's sibling contrasts, and what makes them so? (docs/findings/impact.md §8.8)

The impact estimate (``impact.py``) reads the difference between siblings, which share
their parent's state and all but one validation group of data. Whatever else differs
between two siblings is noise in every contrast: their own shuffles and dropout masks
(``batch_order = "node"``) and the epoch each one's early stopping picks (``patience``,
``inherit = "best"``). This script trains one tree per variant on the same data
(serial driver) and reports, per variant:

* each stage's noise floor (robust spread of the family contrasts, ``impact.noise_floor``)
  in MSE and relative to the median per-cell holdout MSE of that stage's nodes;
* the spread of the contrasts of groups with no planted cell (on data with truth), the
  cleanest measure of pure noise, and the planted groups' mean |z|;
* with truth: the impact score's AUROC for each planted kind against the clean cells, and
  the resist ranking's detection (AUROC, AP, precision@k), which a setting must not spoil;
* compute: epochs, row-epochs and seconds of the tree.

``--chaos M [M ...]`` instead checks how much of the floor is chaos: it trains node
``--chaos-node`` (default 1.1.1) from its parent's state with the first variant's settings
on its training rows minus M random rows (``--draws`` draws per M) and reports how far
its holdout MSE moves (mean change, spread between draws), against its first sibling
trained as the tree trains it (the other held-out group).

Variants are ``NAME:key=value,key=value`` (config keys), e.g.
``--variant base: --variant crn:batch_order=family --variant fixed:patience=99,inherit=last``.
The last stdout line is one JSON object.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
import benchkit  # noqa: E402

#: with no arguments: docs/findings/impact.md §8.8's seed and its four variants
DEFAULT_SEED = 401
DEFAULT_VARIANTS = ["base:", "crn:batch_order=family", "fixed:patience=99,inherit=last",
                    "crnfixed:batch_order=family,patience=99,inherit=last"]

BASE_CONFIG = {"n": 4, "s": 3, "strategy": "EXP2", "epochs": 12, "patience": 3, "batch_size": 256,
               "learning_rate": 0.001, "model": "small", "inherit": "best", "threads": 1}


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition(":")
    if not name:
        raise SystemExit(f"--variant {text!r}: need NAME:key=value,...")
    sets = {}
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        sets[k.strip()] = v.strip()
    return name, sets


def toml_value(v) -> str:
    if isinstance(v, str):
        try:
            float(v)
            return v
        except ValueError:
            return json.dumps(v)
    return json.dumps(v)


def write_config(work: str, data: str, seed: int, sets: dict) -> str:
    """WORK/tree.toml: the base settings, the data and seed, then the variant's keys."""
    cfg = {**BASE_CONFIG, "data": os.path.abspath(data), "seed": seed, **sets}
    path = os.path.join(work, "tree.toml")
    os.makedirs(work, exist_ok=True)
    with open(path, "w") as f:
        f.writelines(f"{k} = {toml_value(v)}\n" for k, v in cfg.items())
    return path


def train_tree(work: str, data: str, seed: int, sets: dict) -> str:
    out = os.path.join(work, "tree")
    res = os.path.join(out, "results.h5")
    if os.path.exists(res):
        return res
    path = write_config(work, data, seed, sets)
    subprocess.run([sys.executable, "-m", "hbl_mpi", "run", path, "--serial", "--out", out, "--overwrite"],
                   check=True, stdout=subprocess.DEVNULL)
    return res


def contrast_stats(con: pd.DataFrame, plan: pd.DataFrame, truth: pd.DataFrame | None) -> dict:
    """Per stage: noise floor, and (with truth) the spread of clean groups' contrasts."""
    from hbl_mpi.analysis.impact import MAD_SCALE, val_sets

    vals = val_sets(plan)
    planted = set(truth["cell"].astype(str)) if truth is not None and len(truth) else set()
    out = {}
    for stage, g in con.groupby("stage"):
        e = g["effect"].to_numpy(dtype=np.float64)
        row = {"contrasts": int(len(e)), "noise_floor": float(g["noise"].iloc[0]),
               "mad_sd": float(MAD_SCALE * np.median(np.abs(e - np.median(e))))}
        if planted:
            dirty = np.array([bool(vals.get(c, frozenset()) & planted) for c in g["child"]])
            if (~dirty).sum() >= 2:
                row["clean_group_sd"] = float(np.std(e[~dirty], ddof=1))
            if dirty.any() and row["noise_floor"] > 0:
                row["planted_group_mean_abs_z"] = float(np.mean(np.abs(e[dirty])) / row["noise_floor"])
        out[int(stage)] = row
    return out


def stage_holdout_median(cell_test: pd.DataFrame) -> dict[int, float]:
    from hbl_mpi.tree.plan import stage_of

    per_node = cell_test.groupby(cell_test["node"].astype(str))["mse"].median()
    st = pd.Series([stage_of(n) for n in per_node.index], index=per_node.index)
    return {int(s): float(per_node[st == s].median()) for s in sorted(st.unique())}


def score_variant(res: str, truth: pd.DataFrame | None) -> dict:
    from hbl_mpi.analysis import paper_stats as A
    from hbl_mpi.analysis.impact import cell_impact
    from hbl_mpi.store.results import read_results

    run = read_results(res)
    imp = cell_impact(run.cell_test, run.plan, run.nodes)
    med = stage_holdout_median(run.cell_test)
    stats = contrast_stats(imp.contrasts, run.plan, truth)
    for s, row in stats.items():
        row["stage_median_mse"] = med.get(s, float("nan"))
        row["noise_floor_relative"] = row["noise_floor"] / med[s] if med.get(s) else float("nan")
    tot = A.compute_totals(run.nodes)
    out = {"stages": stats, "epochs": int(tot["epochs"]), "row_epochs": float(tot["row_epochs"]),
           "train_seconds": float(tot["train_hours"] * 3600),
           "impact_z_sd": float(imp.cells["impact_z"].std())}
    if truth is not None and len(truth):
        from hbl_mpi.analysis.ranking import detection_metrics, rank_cells

        resist = detection_metrics(rank_cells(run.cell_val, run.nodes).set_index("cell")["score"], truth)
        row = resist.set_index("kind").loc["all"]
        out["resist"] = {"auroc": float(row["auroc"]), "average_precision": float(row["average_precision"]),
                         "precision_at_k": float(row["precision_at_k"])}
        impact = detection_metrics(imp.cells.set_index("cell")["impact"], truth)  # all, then each kind vs clean
        out["auroc"] = {str(k): float(a) for k, a in zip(impact["kind"], impact["auroc"])}
    return out


def chaos(work: str, data: str, seed: int, sets: dict, node: str, removals: list[int], draws: int) -> dict:
    """Holdout MSE of ``node`` trained on its rows minus m random rows, against its first sibling."""
    import torch

    from hbl_mpi.core.config import load_config
    from hbl_mpi.run.context import RunContext
    from hbl_mpi.data import load_dataset
    from hbl_mpi.tree.plan import NodeRows, parent_of
    from hbl_mpi.train.trainer import train_node

    torch.set_num_threads(1)
    path = write_config(work, data, seed, sets)  # the CLI's parser and checks: no silent fallback
    ctx = RunContext.build(load_config(path), load_dataset(data))
    ts = ctx.new_train_state()
    chain = [node]
    while parent_of(chain[-1]) != "1":
        chain.append(parent_of(chain[-1]))
    state = ctx.initial_state()
    for anc in reversed(chain[1:]):
        state = ctx.train(anc, state, ts).inherit_state
    rows = ctx.plan.rows(node)

    def holdout(train: np.ndarray) -> float:
        r = NodeRows(train=train, val=rows.val, test=rows.test, val_cells=rows.val_cells, train_cells=rows.train_cells)
        return float(train_node(ctx.tables, r, state, ctx.spec_for(node), train_state=ts).test_loss)

    base = holdout(rows.train)
    rng = np.random.default_rng(0)
    out = {"node": node, "train_rows": int(len(rows.train)), "holdout_mse": base, "removed": {}}
    for m in removals:
        v = [holdout(np.sort(rng.choice(rows.train, len(rows.train) - m, replace=False))) for _ in range(draws)]
        out["removed"][str(m)] = {"mean_change": float(np.mean(v) - base), "sd": float(np.std(v, ddof=1)),
                                  "mean_abs_change": float(np.mean(np.abs(np.array(v) - base)))}
        print(f"[sibling_noise] chaos: {m} rows removed: {out['removed'][str(m)]}", flush=True)
    # the sibling trained as the tree trains it (its own rows, its own validation group)
    sib = node.rsplit(".", 1)[0] + (".2" if not node.endswith(".2") else ".1")
    swap = ctx.train(sib, state, ts).test_loss
    out["sibling_swap"] = {"sibling": sib, "change": float(swap) - base}
    return out


def parser() -> argparse.ArgumentParser:
    """The command line (``parse_args`` fills in the variants); with no arguments: seed 401 and the four
    variants of docs/findings/impact.md §8.8 (base, crn, fixed, crnfixed), under ``<temp dir>/hbl_sibling_noise``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=benchkit.default_work("sibling_noise"),
                   help="the study's folder (default: <temp dir>/hbl_sibling_noise)")
    p.add_argument("--data", help="data file; default: WORK/data.h5 made by `data synth` with --seed/--cells/--drugs")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"data and plan seed (default {DEFAULT_SEED})")
    p.add_argument("--cells", type=int, default=240)
    p.add_argument("--drugs", type=int, default=96)
    p.add_argument("--synth", nargs="*", default=[], help="extra `data synth` arguments")
    p.add_argument("--variant", action="append", metavar="NAME:key=value,...",
                   help="repeatable; default: " + " ".join(DEFAULT_VARIANTS))
    p.add_argument("--chaos", type=int, nargs="+", metavar="M",
                   help="instead of trees: remove M random training rows of --chaos-node (first variant's settings)")
    p.add_argument("--chaos-node", default="1.1.1")
    p.add_argument("--draws", type=int, default=6)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="key=value",
                   help="a config key for every variant's tree (e.g. s=3)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The arguments, the default variants filled in when no --variant is given (an ``append`` action's
    default list would be extended by the given ones, not replaced)."""
    args = parser().parse_args(argv)
    args.variant = args.variant or list(DEFAULT_VARIANTS)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    benchkit.say(__file__, f"seed {args.seed} in {args.work}: " + (
        f"chaos check of node {args.chaos_node}" if args.chaos else
        f"{len(args.variant)} variant(s), one tree each: {' '.join(args.variant)}"))
    os.makedirs(args.work, exist_ok=True)
    data = args.data or os.path.join(args.work, "data.h5")
    if not os.path.exists(data):
        subprocess.run([sys.executable, "-m", "hbl_mpi", "data", "synth", "--seed", str(args.seed), "--cells",
                        str(args.cells), "--drugs", str(args.drugs), *args.synth, "--out", data], check=True,
                       stdout=subprocess.DEVNULL)
    from hbl_mpi.data import load_dataset

    truth = load_dataset(data).truth
    common = dict(parse_variant("x:" + ",".join(args.sets))[1]) if args.sets else {}
    if args.chaos:
        name, sets = parse_variant(args.variant[0])
        res = {"data": data, "seed": args.seed, "variant": name, "settings": {**common, **sets},
               **chaos(os.path.join(args.work, name), data, args.seed, {**common, **sets}, args.chaos_node,
                       args.chaos, args.draws)}
        with open(os.path.join(args.work, f"chaos_{name}.json"), "w") as f:
            json.dump(res, f, indent=1, default=float)
        print(json.dumps(res, default=float))
        return 0
    result = {"data": data, "seed": args.seed, "variants": {}}
    print(f"[sibling_noise] {data}: {len(args.variant)} variant(s), one tree each (serial)", flush=True)
    for text in args.variant:
        name, sets = parse_variant(text)
        t0 = time.perf_counter()
        res = train_tree(os.path.join(args.work, name), data, args.seed, {**common, **sets})
        row = score_variant(res, truth)
        row["settings"] = {**common, **sets}
        row["wall_seconds"] = time.perf_counter() - t0
        result["variants"][name] = row
        print(f"[sibling_noise] {name}: " + ", ".join(
            f"stage {s} floor {r['noise_floor']:.3g} ({r['noise_floor_relative']:.1%})"
            for s, r in row["stages"].items()) + (f"; AUROC {row['auroc']}" if "auroc" in row else ""), flush=True)
    with open(os.path.join(args.work, "summary.json"), "w") as f:
        json.dump(result, f, indent=1, default=float)
    print(json.dumps(result, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
