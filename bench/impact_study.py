"""Does acting on a ranking help? Point removal and retraining on random halves (docs/findings/impact.md §8).

For one data set: synthetic with planted truth, or real (``--tree`` with a finished tree on,
e.g., GDSC2: no truth, so no oracle; every cell counts as clean and the study reports each
ranking's gain over k = 0 and its paired difference from the OOF ranking's, per seed):

1. train the HBL tree (serial driver) and read its rankings: resist (``ranking``'s default
   score), impact and combined (``impact.py``);
2. baselines on the same rows: K-fold OOF residuals, cleanlab on them, a gradient
   attribution (dattri 0.3 TracIn, Grad-Dot on the final state of a model trained on all
   cells, summed per cell over its training rows and the other cells' holdout rows),
   random, and the planted truth (oracle: swaps, shifts, then label noise, then random);
3. **point removal**: for each ranking and k in ``--ks`` (fractions of the cells) drop its
   top k cells, retrain one Uno on the rest (``--seeds`` seeds; early stopping on a seeded
   10 % of the training rows), and measure the MSE (a) on the holdout rows of the clean
   cells that no ranking removes at any k, (b) on *new cell lines*: ``--new-lines`` of
   the clean cells, held out of every retraining, all their rows, and (c) on the holdout
   rows of every clean cell, the removed ones included (no model trains on holdout rows);
4. **LDS**: ``--halves`` random halves of the (non-new-line) cells, one retrain each; the
   Spearman correlation between each method's summed impact over the half and the
   retrained MSE on the new lines.

The last stdout line is one JSON object with every figure. Heavy: run it nice'd, alone.
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

#: the seed with no arguments: docs/findings/impact.md §8.5's first evaluation seed (there at 240 x 96 cells x drugs)
DEFAULT_SEED = 9401

TREE_CONFIG = """
data = "{data}"
n = 4
s = {s}
strategy = "EXP2"
epochs = {epochs}
patience = 3
batch_size = {batch}
learning_rate = 0.001
model = "small"
inherit = "best"
seed = {seed}
threads = 1
"""
METRICS = {"kept_clean": "holdout rows of the clean cells no ranking removes",
           "new_lines": "new cell lines (clean cells held out of every retraining)",
           "all_clean": "holdout rows of every clean cell, the removed ones included"}
ORACLE_KIND_ORDER = ("misid", "swap", "shift", "label_noise")


def log(msg: str) -> None:
    print(f"[impact_study {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------
# data and tree
# ---------------------------------------------------------------------------
def build_tree(work: str, seed: int, cells: int, drugs: int, s: int, epochs: int, synth_extra: list[str],
               batch: int = 256, tree_extra: list[str] = (), data: str | None = None):
    data = data or os.path.join(work, "data.h5")
    if not os.path.exists(data):
        subprocess.run([sys.executable, "-m", "hbl_mpi", "data", "synth", "--seed", str(seed), "--cells", str(cells),
                        "--drugs", str(drugs), *synth_extra, "--out", data], check=True, stdout=subprocess.DEVNULL)
    res = os.path.join(work, "tree", "results.h5")
    t0 = time.perf_counter()
    if not os.path.exists(res):
        cfg = os.path.join(work, "tree.toml")
        with open(cfg, "w") as f:
            f.write(TREE_CONFIG.format(data=data, s=s, epochs=epochs, seed=seed, batch=batch))
            f.writelines(line + "\n" for line in tree_extra)  # e.g. an adaptive tree (issue 14)
        subprocess.run([sys.executable, "-m", "hbl_mpi", "run", cfg, "--serial", "--out", os.path.join(work, "tree"),
                        "--overwrite"], check=True, stdout=subprocess.DEVNULL)
    return data, res, time.perf_counter() - t0


def hbl_scores(res: str, label: str = "HBL") -> tuple[dict[str, pd.Series], dict]:
    from hbl_mpi.analysis import paper_stats as A
    from hbl_mpi.analysis.impact import add_impact, cell_impact
    from hbl_mpi.analysis.ranking import rank_cells
    from hbl_mpi.store.results import read_results

    run = read_results(res)
    rk = rank_cells(run.cell_val, run.nodes, plan=run.plan)
    rk = add_impact(rk, cell_impact(run.cell_test, run.plan, run.nodes)).set_index("cell")
    tot = A.compute_totals(run.nodes)
    cost = {"epochs": int(tot["epochs"]), "row_epochs": float(tot["row_epochs"]),
            "seconds": float(tot["train_hours"] * 3600)}
    return {f"{label} resist": rk["score"], f"{label} impact": rk["impact"], f"{label} combined": rk["combined"]}, cost


# ---------------------------------------------------------------------------
# retraining one Uno on a set of cells
# ---------------------------------------------------------------------------
class Retrainer:
    """One Uno on the non-holdout rows of the given cells; early stopping on 10 % of them."""

    def __init__(self, ds, cfg, max_epochs: int, patience: int):
        import torch

        from hbl_mpi.train.device import resolve_device
        from hbl_mpi.tree.plan import PlanSpec, plan_for
        from hbl_mpi.train.flat_state import TrainState
        from hbl_mpi.train.device_tables import DeviceTables
        from hbl_mpi.uno import build_model

        torch.set_num_threads(1)
        self.ds, self.cfg = ds, cfg
        self.plan = plan_for(ds, PlanSpec.from_config(cfg))
        self.device = resolve_device("cpu")
        self.tables = DeviceTables.from_dataset(ds, self.device)
        self.ts = TrainState(build_model(ds, cfg.model, cfg.resolved_dropout()), cfg.learning_rate, self.device)
        self.max_epochs, self.patience = max_epochs, patience
        self.cell_of_row = np.asarray(ds.cell_index, dtype=np.int64)
        self.ids = ds.cell_ids.astype(str)
        self.index = {c: i for i, c in enumerate(self.ids)}
        self.cache: dict = {}
        self.row_epochs = 0.0
        self.seconds = 0.0
        self.fits = 0

    def rows_of(self, cells, holdout: bool | None) -> np.ndarray:
        mask = np.isin(self.cell_of_row, [self.index[c] for c in cells])
        if holdout is True:
            mask &= self.plan.holdout
        elif holdout is False:
            mask &= ~self.plan.holdout
        return np.flatnonzero(mask).astype(np.int64)

    def fit(self, train_cells, seed: int, evals: dict[str, np.ndarray], keep_state: bool = False) -> dict:
        from hbl_mpi.tree.plan import NodeRows
        from hbl_mpi.train.trainer import TrainSpec, mean_loss, train_node
        from hbl_mpi.uno import initial_state

        key = (frozenset(train_cells), seed, tuple(sorted(evals)))
        if key in self.cache and not keep_state:
            return self.cache[key]
        rows = self.rows_of(train_cells, holdout=False)
        rng = np.random.default_rng([seed, 0x5EED])
        val_mask = rng.random(len(rows)) < 0.1
        nr = NodeRows(train=rows[~val_mask], val=rows[val_mask], test=np.zeros(0, dtype=np.int64),
                      val_cells=np.zeros(0, dtype=np.int64), train_cells=np.zeros(0, dtype=np.int64))
        cfg = self.cfg
        init = initial_state(self.ds, cfg.model, seed, cfg.learning_rate, cfg.resolved_dropout())
        spec = TrainSpec(node=f"retrain.{seed}", stage=1, max_epochs=self.max_epochs, patience=self.patience,
                         batch_size=cfg.batch_size, seed=seed, inherit="best", preset=cfg.model,
                         learning_rate=cfg.learning_rate, dropout=cfg.resolved_dropout())
        t0 = time.perf_counter()
        o = train_node(self.tables, nr, init, spec, train_state=self.ts)
        out = {name: mean_loss(self.ts, self.tables, r) for name, r in evals.items()}
        out["epochs"] = o.epochs_run
        dt = time.perf_counter() - t0
        self.row_epochs += o.epochs_run * len(nr.train)
        self.seconds += dt
        self.fits += 1
        if keep_state:
            out["state"] = o.inherit_state
            out["train_rows"] = nr.train
        self.cache[key] = {k: v for k, v in out.items() if k not in ("state", "train_rows")}
        return out


# ---------------------------------------------------------------------------
# baselines
# ---------------------------------------------------------------------------
def oof_scores(ds, cfg) -> tuple[dict[str, pd.Series], dict]:
    from hbl_mpi.analysis.baselines import cleanlab_available, cleanlab_scores, kfold_residuals, out_of_fold

    oof = out_of_fold(ds, cfg, 5, log=lambda m: None)
    kf = kfold_residuals(oof, 5)
    out = {"OOF residual": kf.score}
    cost = {"OOF residual": {"epochs": kf.epochs, "row_epochs": kf.row_epochs, "seconds": kf.seconds}}
    if cleanlab_available():
        cl = cleanlab_scores(ds, oof, 5)
        out["cleanlab"] = cl.score
        cost["cleanlab"] = {"epochs": cl.epochs, "row_epochs": cl.row_epochs, "seconds": cl.seconds}
    return out, cost


def tracin_scores(rt: Retrainer, state, train_rows: np.ndarray, ref_rows: np.ndarray) -> tuple[pd.Series, float]:
    """dattri TracIn (Grad-Dot, one checkpoint): harm of cell c = -sum of the influence of its
    training rows on the holdout rows of the *other* cells (positive influence = helps)."""
    import torch
    from dattri.algorithm.tracin import TracInAttributor
    from dattri.task import AttributionTask

    t0 = time.perf_counter()
    model = rt.ts.module
    rt.ts.load(state)
    model.eval()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    n_groups = len(rt.tables.gather(rt.tables.index(train_rows[:1]))[0])

    def batch(rows):
        xs, y = rt.tables.gather(rt.tables.index(rows))
        return torch.utils.data.TensorDataset(*[x.detach().clone() for x in xs], y.detach().clone())

    def loss_func(p, data):
        xs = tuple(x.unsqueeze(0) for x in data[:n_groups])
        yhat = torch.func.functional_call(model, p, xs)
        return (yhat - data[n_groups].unsqueeze(0)).square().sum()

    task = AttributionTask(loss_func=loss_func, model=model, checkpoints=params)
    att = TracInAttributor(task=task, weight_list=torch.tensor([rt.cfg.learning_rate]), normalized_grad=False,
                           projector_kwargs={"proj_dim": 64, "device": "cpu"}, device="cpu")
    # large batches: dattri recomputes the reference gradients once per training batch
    dl = lambda rows: torch.utils.data.DataLoader(batch(rows), batch_size=2048, shuffle=False)  # noqa: E731
    infl = att.attribute(dl(train_rows), dl(ref_rows)).numpy()  # (train, ref), > 0 = helps
    tc = rt.cell_of_row[train_rows]
    rc = rt.cell_of_row[ref_rows]
    n = len(rt.ids)
    per_cell_ref = np.zeros((len(train_rows), n))
    np.add.at(per_cell_ref.T, rc, infl.T)  # per train row: summed influence on each ref cell
    total = per_cell_ref.sum(axis=1) - per_cell_ref[np.arange(len(train_rows)), tc]  # the other cells only
    harm = -np.bincount(tc, weights=total, minlength=n)
    seen = np.bincount(tc, minlength=n) > 0
    return pd.Series(harm[seen], index=rt.ids[seen]), time.perf_counter() - t0


def oracle_order(truth: pd.DataFrame, cells: list[str], seed: int) -> pd.Series:
    kinds = dict(zip(truth["cell"].astype(str), truth["kind"].astype(str)))
    rng = np.random.default_rng([seed, 0x0AC1E])
    noise = rng.random(len(cells))
    pri = [len(ORACLE_KIND_ORDER) - ORACLE_KIND_ORDER.index(kinds[c]) if c in kinds and kinds[c] in ORACLE_KIND_ORDER
           else (0.5 if c in kinds else 0.0) for c in cells]
    return pd.Series(np.asarray(pri) * 10 + noise, index=cells)


def top_k(score: pd.Series, pool: list[str], k: int) -> list[str]:
    s = score.reindex(pool).astype("float64").fillna(-np.inf)
    order = sorted(pool, key=lambda c: (-s[c], c))
    return order[:k]


# ---------------------------------------------------------------------------
# the study
# ---------------------------------------------------------------------------
def paired_gains(pr: pd.DataFrame, metric: str, methods: list[str], ks: list[int],
                 reference: str = "OOF residual") -> dict:
    """Per ranking and k: the MSE gain over k = 0 (paired by seed: mean, sd) and the paired
    difference of that gain from ``reference``'s at the same k and seed (> 0: this ranking's
    removal lowers the MSE more). Needs no truth."""
    base = pr[pr["method"] == "none"].set_index("seed")[metric]
    out: dict = {}
    for m in methods:
        out[m] = {}
        for k in ks:
            v = pr[(pr["method"] == m) & (pr["k"] == k)].set_index("seed")[metric]
            g = base - v
            row = {"gain_mean": float(g.mean()), "gain_sd": float(g.std()), "n_seeds": int(g.count())}
            if reference in methods and m != reference:
                r = pr[(pr["method"] == reference) & (pr["k"] == k)].set_index("seed")[metric]
                d = r - v  # MSE of the reference's removal minus this ranking's
                row.update(vs_reference_mean=float(d.mean()), vs_reference_sd=float(d.std()))
            out[m][str(k)] = row
    return out


def default_vs_baselines(pr: pd.DataFrame, metric: str, default: str, methods: list[str], k: int,
                         oracle_gain: float) -> dict:
    """The targets' reading at k: per baseline, the paired per-seed difference of gains
    (default's minus the baseline's) as a fraction of the oracle's mean gain: mean, sd and
    standard error over seeds (> 0: the default's removal helps more)."""
    base = pr[pr["method"] == "none"].set_index("seed")[metric]

    def gains(m):
        return base - pr[(pr["method"] == m) & (pr["k"] == k)].set_index("seed")[metric]

    out = {}
    if default not in methods or not oracle_gain:
        return out
    g0 = gains(default)
    for m in methods:
        if m in (default, "oracle"):
            continue
        d = (g0 - gains(m)) / oracle_gain
        out[m] = {"mean": float(d.mean()), "sd": float(d.std()), "se": float(d.std() / np.sqrt(max(d.count(), 1))),
                  "n_seeds": int(d.count())}
    return out


def markdown(summary: dict) -> str:
    """The findings tables from a summary.json (``--tables``)."""
    out = []
    kp = summary["planted"]
    if not kp:  # real data: gains over k = 0 and against OOF, paired by seed
        for metric, title in METRICS.items():
            if metric not in summary.get("gains", {}):
                continue
            g = summary["gains"][metric]
            ks = [str(k) for k in summary["ks"]]
            base = next(iter(summary["point_removal"][metric].values()))["0"]
            out.append(f"\n**{title}**: k = 0 MSE {base[0]:.5f} ± {base[1]:.5f} (sd over seeds)\n")
            out.append("| ranking | " + " | ".join(f"gain k={k} (± sd)" for k in ks) +
                       " | " + " | ".join(f"vs OOF k={k} (± sd)" for k in ks) + " |")
            out.append("|---" * (2 * len(ks) + 1) + "|")
            for m, per_k in g.items():
                gains = " | ".join(f"{per_k[k]['gain_mean']:.5f} ± {per_k[k]['gain_sd']:.5f}" for k in ks)
                vs = " | ".join(f"{per_k[k]['vs_reference_mean']:.5f} ± {per_k[k]['vs_reference_sd']:.5f}"
                                if "vs_reference_mean" in per_k[k] else "" for k in ks)
                out.append(f"| {m} | {gains} | {vs} |")
    for metric, title in METRICS.items():
        if metric not in summary["oracle_fraction_at_planted"]:
            continue
        fr = summary["oracle_fraction_at_planted"][metric]
        o = fr["_oracle_gain_vs_seed_noise"]
        out.append(f"\n**{title}**: k = 0 MSE sd over seeds {o['baseline_sd']:.5f}; oracle gain at k = {kp}: "
                   f"{o['oracle_gain']:.5f} ± {o['oracle_gain_sd']:.5f} (mean ± sd over seeds, paired)\n")
        ks = [str(k) for k in summary["ks"]]
        out.append("| ranking | " + " | ".join(f"MSE k={k}" for k in ["0"] + ks) +
                   f" | gain at k={kp} (± sd) | fraction of oracle's gain (± sd over seeds) |")
        out.append("|---" * (len(ks) + 4) + "|")
        for m, curve in summary["point_removal"][metric].items():
            f = fr[m]
            cells = " | ".join(f"{curve[k][0]:.5f}" for k in ["0"] + ks)
            se = f['sd_over_seeds'] / np.sqrt(max(len(summary["seeds"]), 1))
            out.append(f"| {m} | {cells} | {f['gain_mean']:.5f} ± {f['gain_sd']:.5f} | "
                       f"{f['fraction']:.2f} ± {f['sd_over_seeds']:.2f} (se {se:.2f}) |")
        vs = summary.get("default_vs_baselines", {}).get(metric)
        if vs:
            out.append(f"\n{summary.get('default', 'the default')} minus each ranking, per seed, in oracle gains "
                       "(mean ± se over seeds; > 0: the default's removal helps more): " +
                       "; ".join(f"{m} {v['mean']:+.2f} ± {v['se']:.2f}" for m, v in vs.items()))
    if "lds" in summary:
        out.append(f"\n**LDS** ({summary['lds_halves']} halves): Spearman(summed score over the half, "
                   "retrained MSE on the new lines)\n")
        out.append("| method | LDS | bootstrap sd |\n|---|---|---|")
        for m, v in summary["lds"].items():
            out.append(f"| {m} | {v['spearman']:.3f} | {v['bootstrap_sd']:.3f} |")
    out.append("\n**Compute** (of each ranking)\n\n| method | epochs | row-epochs | seconds |\n|---|---|---|---|")
    for m, c in summary["cost"].items():
        out.append(f"| {m} | {c['epochs']} | {c['row_epochs']:.3g} | {c['seconds']:.0f} |")
    return "\n".join(out)


def plot_curves(summaries: list[tuple[str, dict]], path: str) -> None:
    """Point-removal curves (MSE against k, mean ± sd over seeds), one row per study, one
    column per metric; written through the atomic helper."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hbl_mpi.core.atomic import replace_file

    metrics = [m for m in METRICS if all(m in sm["point_removal"] for _, sm in summaries)]
    names = list(dict.fromkeys(m for _, sm in summaries for m in sm["point_removal"][metrics[0]]))
    colour = {m: f"C{i}" for i, m in enumerate(x for x in names if x not in ("oracle", "random"))}
    colour.update(oracle="k", random="0.6")  # one colour per ranking in every panel
    fig, axes = plt.subplots(len(summaries), len(metrics), figsize=(4.2 * len(metrics), 3.4 * len(summaries)),
                             squeeze=False)
    for row, (label, sm) in enumerate(summaries):
        for col, metric in enumerate(metrics):
            ax = axes[row, col]
            for m, curve in sm["point_removal"][metric].items():
                ks = sorted(curve, key=int)
                x = [int(k) for k in ks]
                y = np.array([curve[k][0] for k in ks])
                e = np.array([curve[k][1] for k in ks])
                ls = {"oracle": "--", "random": ":"}.get(m, "-")
                ax.plot(x, y, marker="o", ms=3, label=m, color=colour[m], ls=ls)
                ax.fill_between(x, y - e, y + e, alpha=0.06, color=colour[m])
            ax.axvline(sm["planted"], color="0.8", lw=0.8)
            ax.set_title(f"{label}: {METRICS[metric]}", fontsize=7)
            ax.set_xlabel("cells dropped (k)", fontsize=8)
            ax.set_ylabel("test MSE", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0, -1].legend(fontsize=6, loc="best")
    fig.tight_layout()
    replace_file(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def leave_one_out(rt: Retrainer, pool: list[str], kinds: dict, new_rows: np.ndarray, n_clean: int,
                  seeds: list[int], scores: dict[str, pd.Series], seed: int) -> dict:
    """Leave-one-cell-out effects: the planted cells and ``n_clean`` random clean cells, each seed.

    effect(c) = MSE(all pool cells) - MSE(pool without c), on the new lines and on the holdout
    rows of the other clean pool cells (> 0: removing c helps, c harms). The noise floor is
    the effects' seed-to-seed sd.
    """
    from hbl_mpi.train.trainer import mean_loss

    rng = np.random.default_rng([seed, 0x1005])
    clean = [c for c in pool if c not in kinds]
    cells = sorted(c for c in pool if c in kinds) + sorted(rng.choice(clean, size=min(n_clean, len(clean)),
                                                                       replace=False))
    rows = []
    for sd in seeds:
        base = rt.fit(pool, sd, {"new_lines": new_rows}, keep_state=True)
        for c in cells:
            others = rt.rows_of([x for x in clean if x != c], holdout=True)
            rt.ts.load(base["state"])
            base_o = mean_loss(rt.ts, rt.tables, others)
            r = rt.fit([x for x in pool if x != c], sd, {"new_lines": new_rows, "others": others})
            rows.append({"cell": c, "kind": kinds.get(c, ""), "seed": sd,
                         "effect_new_lines": base["new_lines"] - r["new_lines"], "effect_others": base_o - r["others"]})
        log(f"LOO seed {sd} done ({rt.fits} fits)")
    df = pd.DataFrame(rows)
    from scipy.stats import spearmanr

    out = {"cells": len(cells), "seeds": seeds}
    for metric in ("effect_new_lines", "effect_others"):
        per_cell = df.groupby("cell")[metric].agg(["mean", "std"])
        kind = per_cell.index.map(lambda c: kinds.get(c, "clean"))
        out[metric] = {
            "noise_floor_sd": float(df.groupby("cell")[metric].std().mean()),
            "by_kind_mean": {k: float(per_cell["mean"][kind == k].mean()) for k in sorted(set(kind))},
            "clean_inside_2sd": float((per_cell["mean"][kind == "clean"].abs()
                                       <= 2 * per_cell["std"][kind == "clean"] / np.sqrt(len(seeds))).mean()),
            "spearman_with": {m: float(spearmanr(scores[m].reindex(per_cell.index).astype(float),
                                                 per_cell["mean"], nan_policy="omit").statistic)
                              for m in scores},
        }
    out["table"] = df.to_dict("records")
    return out


def parser() -> argparse.ArgumentParser:
    """The command line; with no arguments: seed 9401 at the default sizes (160 cells x 48 drugs), under
    ``<temp dir>/hbl_impact_study`` (a tree or data already there is reused). Heavy."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=benchkit.default_work("impact_study"),
                   help="the study's folder (default: <temp dir>/hbl_impact_study)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"data and plan seed (default {DEFAULT_SEED})")
    p.add_argument("--cells", type=int, default=160)
    p.add_argument("--drugs", type=int, default=48)
    p.add_argument("--synth", nargs="*", default=[], help="extra `data synth` arguments")
    p.add_argument("--s", type=int, default=3)
    p.add_argument("--tree-set", dest="tree_set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra TOML line of the tree's config, repeatable (e.g. expand=\"adaptive\")")
    p.add_argument("--data", default=None, help="use this data file (e.g. another study's) instead of WORK/data.h5")
    p.add_argument("--tree", default=None, metavar="RESULTS",
                   help="a finished tree's results.h5 (e.g. an MPI run of jobs/gdsc.toml) instead of training one; "
                        "its data file is --data, or the one its config names")
    p.add_argument("--extra-tree", dest="extra_tree", action="append", default=[], metavar="LABEL=RESULTS",
                   help="another finished tree on the same data (e.g. batch_order = \"family\"): its rankings "
                        "join as 'LABEL resist', 'LABEL impact', 'LABEL combined'; repeatable")
    p.add_argument("--tree-epochs", type=int, default=12)
    p.add_argument("--retrain-epochs", type=int, default=12)
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--batch", type=int, default=256, help="batch size of the tree and of every retraining")
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 9)), help="retraining seeds")
    p.add_argument("--ks", type=float, nargs="+", default=[0.025, 0.05, 0.10], help="fractions of the cells")
    p.add_argument("--methods", nargs="*", default=None, help="rankings to run (default: all)")
    p.add_argument("--new-lines", type=float, default=0.10, help="fraction of clean cells held out of all retrains")
    p.add_argument("--halves", type=int, default=50)
    p.add_argument("--default", default="HBL resist",
                   help="the ranking the targets are read for (curate's default): paired against every other")
    p.add_argument("--no-tracin", action="store_true")
    p.add_argument("--loo", type=int, default=0, metavar="N_CLEAN",
                   help="only the leave-one-out phase: the planted cells and N_CLEAN clean ones (no TracIn)")
    p.add_argument("--tables", action="store_true", help="print the markdown tables of WORK/summary.json and stop")
    p.add_argument("--plot", metavar="PNG", help="draw the point-removal curves of WORK/summary.json (WORK may be "
                   "given several times as comma-separated LABEL=WORK pairs) and stop")
    return p


def _summary(work: str) -> dict:
    """WORK/summary.json, which a finished study writes; its absence is a one-line exit."""
    path = os.path.join(work, "summary.json")
    if not os.path.exists(path):
        benchkit.need_first(__file__, f"{path} does not exist: run `python bench/impact_study.py --work {work}` "
                                      f"(the study) first")
    with open(path) as f:
        return json.load(f)


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.plot:
        studies = []
        for item in args.work.split(","):
            label, _, work = item.rpartition("=")
            studies.append((label or os.path.basename(work), _summary(work)))
        plot_curves(studies, args.plot)
        return 0
    if args.tables:
        print(markdown(_summary(args.work)))
        return 0
    if args.tree and not os.path.exists(args.tree):
        benchkit.need_first(__file__, f"--tree {args.tree} does not exist: train the tree first (e.g. "
                                      f"`mpiexec -n 4 python -m hbl_mpi run jobs/gdsc.toml --out OUT`)")
    if not args.no_tracin and not args.loo:
        import importlib.util

        if importlib.util.find_spec("dattri") is None:
            benchkit.need_first(__file__, "the TracIn baseline needs dattri: run `pip install -e '.[baselines]'` "
                                          "first, or pass --no-tracin")
    benchkit.say(__file__, f"seed {args.seed} in {args.work}: tree, rankings, point removal over "
                           f"{len(args.seeds)} retraining seeds, {args.halves} LDS halves (heavy)")
    os.makedirs(args.work, exist_ok=True)

    from hbl_mpi.analysis.baselines import config_from_dict
    from hbl_mpi.data import load_dataset
    from hbl_mpi.store.results import read_results

    t_start = time.perf_counter()
    if args.tree:
        data, res, tree_s = args.data or read_results(args.tree).config["data"], args.tree, 0.0
    else:
        data, res, tree_s = build_tree(args.work, args.seed, args.cells, args.drugs, args.s, args.tree_epochs,
                                       args.synth, args.batch, args.tree_set, args.data)
    log(f"tree ready ({tree_s:.0f} s)")
    ds = load_dataset(data)
    truth = ds.truth if ds.truth is not None else pd.DataFrame({"cell": [], "kind": []})
    cfg = config_from_dict(read_results(res).config)
    scores, hbl_cost = hbl_scores(res)
    cost = {k: hbl_cost for k in scores}
    for item in args.extra_tree:
        label, sep, path = item.partition("=")
        if not sep or not label or not os.path.exists(path):
            p.error(f"--extra-tree {item!r}: need LABEL=RESULTS with an existing results file")
        more, more_cost = hbl_scores(path, label)
        scores.update(more)
        cost.update({k: more_cost for k in more})
    oof, oof_cost = oof_scores(ds, cfg)
    scores.update(oof)
    cost.update(oof_cost)
    log("OOF and cleanlab ready")

    ids = list(ds.cell_ids.astype(str))
    kinds = dict(zip(truth["cell"].astype(str), truth["kind"].astype(str)))
    clean = [c for c in ids if c not in kinds]
    rng = np.random.default_rng([args.seed, 0x11E5])
    new_lines = sorted(rng.choice(clean, size=max(1, int(round(args.new_lines * len(clean)))), replace=False))
    pool = [c for c in ids if c not in set(new_lines)]
    rt = Retrainer(ds, cfg, args.retrain_epochs, args.patience)
    new_rows = rt.rows_of(new_lines, holdout=None)

    # the full-data model (k = 0, first seed) doubles as the attribution method's checkpoint
    if not args.no_tracin and not args.loo:
        full = rt.fit(pool, args.seeds[0], {"new_lines": new_rows}, keep_state=True)
        ref_rows = rt.rows_of(pool, holdout=True)
        tr, tr_s = tracin_scores(rt, full["state"], full["train_rows"], ref_rows)
        scores["TracIn (dattri)"] = tr
        cost["TracIn (dattri)"] = {"epochs": full["epochs"], "row_epochs": float(full["epochs"] * len(full["train_rows"])),
                                   "seconds": tr_s}
        log(f"TracIn ready ({tr_s:.0f} s)")
    if args.loo:
        loo = leave_one_out(rt, pool, kinds, new_rows, args.loo, args.seeds, scores, args.seed)
        loo["seconds"] = time.perf_counter() - t_start
        with open(os.path.join(args.work, "loo.json"), "w") as f:
            json.dump(loo, f, indent=1)
        print(json.dumps(loo))
        return 0
    scores["random"] = pd.Series(np.random.default_rng([args.seed, 0xA11]).random(len(pool)), index=pool)
    n_planted = len(truth)
    if n_planted:
        scores["oracle"] = oracle_order(truth, pool, args.seed)
    methods = args.methods or list(scores)
    ks = sorted({max(1, int(round(f * len(ids)))) for f in args.ks})
    if n_planted and n_planted not in ks:
        ks = sorted(ks + [n_planted])
    removed = {(m, k): top_k(scores[m], pool, k) for m in methods for k in ks}
    ever = set().union(*removed.values())
    eval_cells = [c for c in pool if c not in kinds and c not in ever]
    evals = {"kept_clean": rt.rows_of(eval_cells, holdout=True), "new_lines": new_rows,
             "all_clean": rt.rows_of([c for c in pool if c not in kinds], holdout=True)}
    log(f"{len(ids)} cells, {n_planted} planted, {len(new_lines)} new lines, {len(eval_cells)} evaluation cells; "
        f"k = {ks}; methods {methods}")

    rows = []
    for seed in args.seeds:
        base = rt.fit(pool, seed, evals)
        rows.append({"method": "none", "k": 0, "seed": seed, **base})
        for m in methods:
            for k in ks:
                drop = set(removed[(m, k)])
                r = rt.fit([c for c in pool if c not in drop], seed, evals)
                rows.append({"method": m, "k": k, "seed": seed, "planted_removed": len(drop & set(kinds)), **r})
        log(f"seed {seed} done ({rt.fits} fits, {rt.seconds:.0f} s)")
        pd.DataFrame(rows).to_csv(os.path.join(args.work, "point_removal.csv"), index=False)
    pr = pd.DataFrame(rows)

    summary = {"cells": len(ids), "planted": n_planted, "default": args.default, "new_lines": len(new_lines),
               "eval_cells": len(eval_cells),
               "ks": ks, "seeds": args.seeds, "retrain_row_epochs": rt.row_epochs, "retrain_seconds": rt.seconds,
               "cost": cost, "point_removal": {}, "oracle_fraction_at_planted": {}, "gains": {}}
    base = pr[pr["method"] == "none"].set_index("seed")
    for metric in METRICS:
        curves = {}
        for m in methods:
            curve = {0: [float(base[metric].mean()), float(base[metric].std())]}
            for k in ks:
                v = pr[(pr["method"] == m) & (pr["k"] == k)].set_index("seed")[metric]
                curve[k] = [float(v.mean()), float(v.std())]
            curves[m] = curve
        summary["point_removal"][metric] = curves
        summary["gains"][metric] = paired_gains(pr, metric, methods, ks)
        if not n_planted:
            continue  # no truth: no oracle to take fractions of
        o = pr[(pr["method"] == "oracle") & (pr["k"] == n_planted)].set_index("seed")[metric]
        g_or = base[metric] - o
        frac = {}
        for m in methods:
            v = pr[(pr["method"] == m) & (pr["k"] == n_planted)].set_index("seed")[metric]
            g = base[metric] - v
            # per seed paired gains; the fraction of the oracle's mean gain, and its spread over seeds
            per_seed = g / g_or.mean()
            frac[m] = {"fraction": float(g.mean() / g_or.mean()), "sd_over_seeds": float(per_seed.std()),
                       "gain_mean": float(g.mean()), "gain_sd": float(g.std())}
        frac["_oracle_gain_vs_seed_noise"] = {"oracle_gain": float(g_or.mean()), "oracle_gain_sd": float(g_or.std()),
                                              "baseline_sd": float(base[metric].std())}
        summary["oracle_fraction_at_planted"][metric] = frac
        summary.setdefault("default_vs_baselines", {})[metric] = default_vs_baselines(
            pr, metric, args.default, methods, n_planted, float(g_or.mean()))
    pr.to_csv(os.path.join(args.work, "point_removal.csv"), index=False)
    log("point removal done")

    # LDS: random halves, the retrained loss on the new lines against each method's summed impact
    if args.halves > 0:
        hr = np.random.default_rng([args.seed, 0x4A1F])
        lds_rows = []
        for h in range(args.halves):
            half = sorted(hr.choice(pool, size=len(pool) // 2, replace=False))
            r = rt.fit(half, 1000 + h, {"new_lines": new_rows})
            lds_rows.append({"half": h, "cells": half, "new_lines": r["new_lines"]})
            if h % 10 == 9:
                log(f"LDS half {h + 1}/{args.halves}")
        from scipy.stats import spearmanr

        loss = np.array([r["new_lines"] for r in lds_rows])
        lds = {}
        for m in [x for x in scores if x not in ("random",)]:
            s = scores[m].reindex(pool).astype("float64")
            # scores that are not additive impacts (resist, OOF, cleanlab) are summed all the same
            pred = np.array([np.nansum(s.reindex(r["cells"]).to_numpy()) for r in lds_rows])
            rho = spearmanr(pred, loss).statistic
            # spread: bootstrap over halves
            bs = []
            br = np.random.default_rng(7)
            for _ in range(200):
                i = br.integers(0, len(loss), len(loss))
                bs.append(spearmanr(pred[i], loss[i]).statistic)
            lds[m] = {"spearman": float(rho), "bootstrap_sd": float(np.nanstd(bs))}
        summary["lds"] = lds
        summary["lds_halves"] = len(lds_rows)
        pd.DataFrame([{"half": r["half"], "new_lines": r["new_lines"]} for r in lds_rows]).to_csv(
            os.path.join(args.work, "lds.csv"), index=False)
    summary["study_seconds"] = time.perf_counter() - t_start
    with open(os.path.join(args.work, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=float)
    print(json.dumps(summary, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
