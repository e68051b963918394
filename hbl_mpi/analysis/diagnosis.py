"""Say what is wrong with a flagged cell line: label noise, an offset, a swapped identity, or biology.

Pure policy (numpy/pandas): every function takes plain tables and returns plain tables;
nothing here trains, reads files or needs MPI. The derivation of each statistic and of
the thresholds is in docs/findings/diagnosis.md §9.

Inputs, all from ``results.h5``:

* ``cell_pred``: for every node, its prediction for *every* drug of each of its
  validation cells, with the measured (validation) label where there is one. Each cell's
  row of the prediction grid therefore comes from a model that never trained on it; the
  grid of one stage holds every cell (``prediction_grid``).
* ``cell_neighbours``: the cells' nearest neighbours by expression (``expression_neighbours``,
  written once per run).
* the ranking (``ranking.rank_cells``): which cells are flagged.

Per cell c with measured drugs M, labels y and held-out predictions p (``cell_evidence``):

* ``bias_t``: t-statistic of the mean residual r = y - p over M (an assay offset moves
  every drug the same way); ``bias_share`` = mean(r)^2 / mean(r^2), the part of the
  squared error a constant explains.
* ``resid_pred_corr``: corr(r, p). If y is unrelated to p (noisy labels),
  corr(r, p) = -sd(p) / sqrt(var y + var p), about -0.7; when y follows p it is near 0.
  ``response_pred_corr`` = corr(y, p) says the same from the other side (about 0 for noise).
* ``identity_gain``: ln(MSE of p_c / MSE of p_c'), c' the other cell whose held-out
  predictions fit y best (``likely_identity``): > 0 when another cell's expression explains
  c's responses better than its own (a swapped or misidentified line). ``identity_fit`` is
  that best MSE over the stage's median cell MSE (a true partner fits like a clean cell, ~1).
* ``neighbour_coherence``: mean cosine similarity between c's drug-centred residual
  profile and those of its k expression neighbours: the model errs the same way on cells
  that look alike (biology it has not learned), against ~0 for an error of c's own.

``diagnose`` turns them into one label with a bootstrap confidence (the share of
resamples of c's drugs that give the same label).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from hbl_mpi.core.seeding import generator
from hbl_mpi.data.dataset import cell_feature_matrix
from hbl_mpi.analysis.robust import robust_z
from hbl_mpi.tree.plan import stage_of

KINDS = ("label_noise", "shift", "swap", "replicate_disagreement", "distinct", "distinct_group", "none")
ERROR_KINDS = ("label_noise", "shift", "swap", "replicate_disagreement")
"""``distinct_group`` (the cell's metadata group errs as it does) is set by ``group_diagnosis.py``;
``replicate_disagreement`` (a second screen disagrees, and the model sides with it) by ``_with_reference``."""
NEIGHBOURS = 10
EPS = 1e-12


# ---------------------------------------------------------------------------
# expression neighbours (run-level, written once by the run)
# ---------------------------------------------------------------------------
def expression_neighbours(ds, k: int = NEIGHBOURS, chunk: int = 1024) -> pd.DataFrame | None:
    """The k nearest cells of every cell by Pearson correlation of standardised expression.

    Columns cell, neighbour, rank (1 = nearest), similarity (the correlation). None when
    the data has no cell features or fewer than 2 cells.
    """

    x = cell_feature_matrix(ds)
    n = len(x)
    if n < 2 or x.shape[1] == 0:
        return None
    k = min(k, n - 1)
    z = x - x.mean(axis=1, keepdims=True)
    z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), EPS)
    ids = np.asarray(ds.cell_ids).astype(str)
    cells, nbrs, ranks, sims = [], [], [], []
    for a in range(0, n, chunk):
        s = z[a : a + chunk] @ z.T
        s[np.arange(len(s)), np.arange(a, a + len(s))] = -np.inf
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        cells.append(np.repeat(ids[a : a + len(s)], k))
        nbrs.append(ids[top].ravel())
        ranks.append(np.tile(np.arange(1, k + 1), len(s)))
        sims.append(np.take_along_axis(s, top, axis=1).ravel())
    return pd.DataFrame({"cell": np.concatenate(cells).astype(object), "neighbour": np.concatenate(nbrs).astype(object),
                         "rank": np.concatenate(ranks).astype(np.int64), "similarity": np.concatenate(sims)})


# ---------------------------------------------------------------------------
# the held-out prediction grid
# ---------------------------------------------------------------------------
@dataclass
class Grid:
    """One stage's held-out predictions: ``pred[i, j]`` for cell ``cells[i]``, drug ``drugs[j]``,
    by the node that validated that cell; ``label`` NaN where not measured."""

    cells: np.ndarray
    drugs: np.ndarray
    pred: np.ndarray  # (C, D) float64
    label: np.ndarray  # (C, D) float64, NaN = not measured
    node: np.ndarray  # (C,) the node each row comes from
    stage: np.ndarray  # (C,) its stage

    @property
    def measured(self) -> np.ndarray:
        return np.isfinite(self.label)

    def index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.cells)}


def prediction_grid(cell_pred: pd.DataFrame, nodes: pd.DataFrame | None = None, stage: int | None = None) -> Grid:
    """The held-out grid, one row per cell, from the deepest stage that measured the cell.

    ``stage`` picks one stage instead (cells it lacks are left out). Nodes that are not
    done (when ``nodes`` is given) are ignored.
    """
    cp = cell_pred
    if nodes is not None:
        done = set(nodes.loc[nodes["status"].astype(str) == "done", "node"].astype(str))
        cp = cp[cp["node"].astype(str).isin(done)]
    cp = cp.assign(node=cp["node"].astype(str), cell=cp["cell"].astype(str), drug=cp["drug"].astype(str))
    node_stage = {n: stage_of(n) for n in cp["node"].unique()}
    cp = cp.assign(stage=cp["node"].map(node_stage))
    if stage is not None:
        cp = cp[cp["stage"] == stage]
    # the deepest node per cell
    deep = cp.groupby("cell")["stage"].transform("max")
    cp = cp[cp["stage"] == deep]
    cells = np.array(sorted(cp["cell"].unique()), dtype=object)
    drugs = np.array(sorted(cp["drug"].unique()), dtype=object)
    ci = pd.Index(cells).get_indexer(cp["cell"])
    di = pd.Index(drugs).get_indexer(cp["drug"])
    pred = np.full((len(cells), len(drugs)), np.nan)
    label = np.full((len(cells), len(drugs)), np.nan)
    pred[ci, di] = cp["pred"].to_numpy(dtype=np.float64)
    label[ci, di] = cp["label"].to_numpy(dtype=np.float64)
    first = cp.drop_duplicates("cell").set_index("cell")
    return Grid(cells, drugs, pred, label, first.loc[cells, "node"].to_numpy(dtype=object),
                first.loc[cells, "stage"].to_numpy(dtype=np.int64))


# ---------------------------------------------------------------------------
# per-cell statistics (weighted, so that the bootstrap reuses them)
# ---------------------------------------------------------------------------
def _wcorr(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted Pearson correlation along the last axis (w broadcasts)."""
    sw = np.maximum(w.sum(-1), EPS)
    ma = (w * a).sum(-1) / sw
    mb = (w * b).sum(-1) / sw
    da, db = a - ma[..., None], b - mb[..., None]
    cov = (w * da * db).sum(-1)
    va, vb = (w * da * da).sum(-1), (w * db * db).sum(-1)
    return cov / np.sqrt(np.maximum(va * vb, EPS))


def drug_centred_residuals(grid: Grid) -> np.ndarray:
    """Residuals (label - prediction) minus each drug's median residual over cells: what is
    particular to the cell, not a drug the model gets wrong for every cell. NaN = unmeasured."""
    r = grid.label - grid.pred
    med = np.nanmedian(np.where(grid.measured, r, np.nan), axis=0)
    return r - np.nan_to_num(med)[None, :]


@dataclass
class CellStats:
    """The statistics of one cell under drug weights ``w`` (one row per weight vector)."""

    n: np.ndarray
    mse: np.ndarray
    bias: np.ndarray
    bias_t: np.ndarray
    bias_share: np.ndarray
    resid_pred_corr: np.ndarray
    response_pred_corr: np.ndarray
    identity_gain: np.ndarray  # ln(own centred MSE / the likely identity's centred MSE)
    identity_mse: np.ndarray  # the likely identity's centred MSE
    best_raw_mse: np.ndarray  # the best raw MSE of any other cell's predictions
    best: np.ndarray  # index of the likely identity
    coherence: np.ndarray


def _centred_mse(E: np.ndarray, w: np.ndarray, cover: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(raw MSE, centred MSE, count) of residual rows E (C, D) under weights w (B, D)."""
    cnt = w @ cover.T
    se = w @ (E * E).T
    s1 = w @ E.T
    n = np.maximum(cnt, EPS)
    return se / n, (se - s1 * s1 / n) / n, cnt


def reverse_fits(i: int, grid: Grid) -> np.ndarray:
    """Centred MSE of every cell's measured labels against cell ``i``'s held-out predictions.

    The other half of a swap: if ``i`` holds the expression of line b, ``i``'s predictions
    fit b's responses. Cells with fewer than 5 measured drugs get +inf."""
    y = grid.label
    m = grid.measured & np.isfinite(grid.pred[i])[None, :]
    E = np.where(m, y - grid.pred[i][None, :], 0.0)
    n = m.sum(1)
    mean = E.sum(1) / np.maximum(n, 1)
    out = ((E - mean[:, None]) ** 2 * m).sum(1) / np.maximum(n, 1)
    out[n < 5] = np.inf
    out[i] = np.inf
    return out


def _cell_stats(i: int, grid: Grid, rc: np.ndarray, nbr: np.ndarray, w: np.ndarray,
                rev: np.ndarray) -> CellStats:
    """Statistics of cell ``i``; ``w`` (B, D) weights per drug (1 = the observed sample);
    ``rev`` = ``reverse_fits(i, grid)``."""
    m = grid.measured[i]
    y = np.where(m, grid.label[i], 0.0)
    p = np.where(m, grid.pred[i], 0.0)
    w = w * m[None, :]
    n = w.sum(1)
    r = y - p
    sw = np.maximum(n, EPS)
    bias = (w * r).sum(1) / sw
    mse = (w * r * r).sum(1) / sw
    var = np.maximum((w * (r - bias[:, None]) ** 2).sum(1) / np.maximum(n - 1, 1), EPS)
    bias_t = bias / np.sqrt(var / sw)
    own_centred = np.maximum(mse - bias * bias, EPS)
    # identity: every other cell's held-out predictions on this cell's drugs
    E = y[None, :] - grid.pred
    cover = np.isfinite(E).astype(np.float64)
    E = np.where(np.isfinite(E), E, 0.0)
    raw, centred, cnt = _centred_mse(E, w, cover)
    bad = cnt < 0.9 * n[:, None]  # a candidate must cover the cell's drugs
    bad[:, i] = True
    raw[bad] = np.inf
    centred[bad] = np.inf
    best_raw = raw.min(1)
    # the likely identity: its predictions fit this cell's responses and (for a swap of
    # two lines) this cell's predictions fit its responses
    best = np.argmin(centred + rev[None, :], axis=1)
    fwd = centred[np.arange(len(w)), best]
    # neighbourhood coherence: cosine of drug-centred residual profiles
    a = np.where(m, rc[i], 0.0)
    coh = np.full(len(w), np.nan)
    if len(nbr):
        B = np.where(np.isfinite(rc[nbr]), rc[nbr], 0.0)  # (K, D)
        num = (w * a) @ B.T  # (B, K)
        den = np.sqrt(np.maximum((w * a * a).sum(1)[:, None] * (w @ (B * B).T), EPS))
        coh = (num / den).mean(1)
    with np.errstate(divide="ignore"):  # a perfect own fit: an identity gain of -inf, not a warning
        gain = np.log(own_centred / np.maximum(fwd, EPS))
    return CellStats(n, mse, bias, bias_t, bias * bias / np.maximum(mse, EPS),
                     _wcorr(r, p, w), _wcorr(y, p, w), gain, fwd, best_raw, best, coh)


def _neighbour_rows(grid: Grid, neighbours: pd.DataFrame | None, k: int) -> list[np.ndarray]:
    idx = grid.index()
    out = [np.zeros(0, dtype=np.int64) for _ in grid.cells]
    if neighbours is None or not len(neighbours):
        return out
    nb = neighbours.assign(cell=neighbours["cell"].astype(str), neighbour=neighbours["neighbour"].astype(str))
    nb = nb[nb["rank"] <= k].sort_values(["cell", "rank"])
    for c, g in nb.groupby("cell"):
        if c in idx:
            out[idx[c]] = np.array([idx[x] for x in g["neighbour"] if x in idx], dtype=np.int64)
    return out


def cell_evidence(grid: Grid, neighbours: pd.DataFrame | None = None, k: int = NEIGHBOURS) -> pd.DataFrame:
    """One row per cell of the grid: the statistics of the module docstring, observed drugs."""
    rc = drug_centred_residuals(grid)
    nbrs = _neighbour_rows(grid, neighbours, k)
    one = np.ones((1, len(grid.drugs)))
    rows = []
    for i, c in enumerate(grid.cells):
        s = _cell_stats(i, grid, rc, nbrs[i], one, reverse_fits(i, grid))
        rows.append({"cell": c, "diag_node": grid.node[i], "diag_stage": int(grid.stage[i]), "n_drugs": int(s.n[0]),
                     "diag_mse": s.mse[0], "bias": s.bias[0], "bias_t": s.bias_t[0], "bias_share": s.bias_share[0],
                     "resid_pred_corr": s.resid_pred_corr[0], "response_pred_corr": s.response_pred_corr[0],
                     "identity_gain": s.identity_gain[0], "identity_mse": s.identity_mse[0],
                     "best_raw_mse": s.best_raw_mse[0], "best_fit_cell": grid.cells[s.best[0]],
                     "neighbour_coherence": s.coherence[0]})
    ev = pd.DataFrame(rows)
    ev.attrs.update(_scales(ev))
    return _relative(ev, ev.attrs)


def _scales(ev: pd.DataFrame) -> dict:
    """The typical cell of the grid: median raw and centred MSE (what "fits like a clean cell" means)."""
    if not len(ev):
        return {"median_mse": np.nan, "median_centred_mse": np.nan}
    centred = ev["diag_mse"] - ev["bias"] ** 2
    return {"median_mse": float(np.nanmedian(ev["diag_mse"])), "median_centred_mse": float(np.nanmedian(centred))}


def _relative(ev: pd.DataFrame, scale: dict) -> pd.DataFrame:
    ev["mse_ratio_diag"] = ev["diag_mse"] / max(scale["median_mse"], EPS)
    ev["identity_fit"] = ev["identity_mse"] / max(scale["median_centred_mse"], EPS)
    ev["best_fit_ratio"] = ev["best_raw_mse"] / max(scale["median_mse"], EPS)
    return ev


# ---------------------------------------------------------------------------
# the rules
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Rules:
    """Thresholds of ``diagnose`` (derived in docs/findings/diagnosis.md §9, fixed before the benchmark)."""

    flag_z: float = 0.0  # cells whose ranking score's robust z (within the run) is below this are `none`
    swap_gain: float = 0.0  # identity_gain above this ...
    swap_fit: float = 0.0  # ... and identity_fit below this: another cell's expression fits the pattern
    noise_fit: float = 0.0  # best_fit_ratio above this: no cell's predictions fit the responses ...
    noise_corr: float = 0.0  # ... and response_pred_corr below this: unrelated to the predictions
    coherence: float = 0.0  # neighbour_coherence above this: the neighbours err the same way
    shift_share: float = 0.0  # bias_share above this ...
    shift_t: float = 0.0  # ... and |bias_t| above this: one sign across the drugs
    ref_agree: float = 0.0  # with a reference: screens agreeing this well is reproducible data
    bootstrap: int = 200


RULES = Rules(flag_z=2.0, swap_gain=1.4, swap_fit=3.0, noise_fit=4.0, noise_corr=0.5, coherence=0.25,
              shift_share=0.5, shift_t=4.0, ref_agree=0.5)


def _label(flagged: bool, st: dict, rules: Rules) -> np.ndarray:
    """The decision list, vectorised over bootstrap replicates (``st``: arrays of one cell's
    statistics: identity_gain, identity_fit, best_fit_ratio, response_pred_corr,
    neighbour_coherence, bias_share, bias_t)."""
    gain = np.asarray(st["identity_gain"], dtype=np.float64)
    out = np.full(gain.shape, "none", dtype=object)
    if not flagged:
        return out
    coh = np.nan_to_num(np.asarray(st["neighbour_coherence"], dtype=np.float64), nan=0.0)
    swap = (gain >= rules.swap_gain) & (st["identity_fit"] <= rules.swap_fit)
    noise = ~swap & (st["best_fit_ratio"] >= rules.noise_fit) & (st["response_pred_corr"] <= rules.noise_corr)
    distinct = ~swap & ~noise & (coh >= rules.coherence)
    shift = (~swap & ~noise & ~distinct & (st["bias_share"] >= rules.shift_share)
             & (np.abs(st["bias_t"]) >= rules.shift_t))
    out[swap] = "swap"
    out[noise] = "label_noise"
    out[distinct] = "distinct"
    out[shift] = "shift"
    return out


_STATS = ("identity_gain", "identity_fit", "best_fit_ratio", "response_pred_corr", "neighbour_coherence",
          "bias_share", "bias_t")


def diagnose(grid: Grid, ranking: pd.DataFrame, neighbours: pd.DataFrame | None = None,
             rules: Rules = RULES, reference: pd.DataFrame | None = None, seed: int = 0,
             k: int = NEIGHBOURS) -> pd.DataFrame:
    """Evidence, ``diagnosis``, ``likely_identity`` and ``confidence`` for every ranked cell.

    ``ranking`` has cell and score (``ranking.rank_cells``). ``reference`` is
    ``cross_screen`` output (cell, screen_agreement, model_ref_corr, model_this_corr): when
    given, an error kind whose responses the other screen reproduces (agreement >=
    ``ref_agree``, and the model fits the reference no better than this screen) becomes
    ``distinct``, and a flagged cell left `none`/`distinct` whose screens disagree while the
    model agrees with the reference better is ``replicate_disagreement``. Confidence = share of
    ``rules.bootstrap`` resamples of the cell's drugs (with replacement) giving the label.
    """
    ev = cell_evidence(grid, neighbours, k)
    scale = dict(ev.attrs)
    score = ranking.assign(cell=ranking["cell"].astype(str)).set_index("cell")["score"]
    ev["score"] = ev["cell"].map(score).astype(float)
    ev["score_z"] = robust_z(ev["score"])
    ev["flagged"] = ev["score_z"].fillna(-np.inf) >= rules.flag_z
    ref = None
    if reference is not None and len(reference):
        ref = reference.assign(cell=reference["cell"].astype(str)).set_index("cell")
    rc = drug_centred_residuals(grid)
    nbrs = _neighbour_rows(grid, neighbours, k)
    rng = generator(seed)
    D = len(grid.drugs)
    labels, conf, ident = [], [], []
    for i, row in enumerate(ev.to_dict("records")):
        lab = _label(bool(row["flagged"]), {k_: np.array([row[k_]]) for k_ in _STATS}, rules)[0]
        refrow = ref.loc[row["cell"]] if ref is not None and row["cell"] in ref.index else None
        if refrow is not None:
            lab = _with_reference(lab, bool(row["flagged"]), refrow, rules)
        c = 1.0
        if row["flagged"] and rules.bootstrap > 0:
            m = np.flatnonzero(grid.measured[i])
            w = np.zeros((rules.bootstrap, D))
            if len(m):
                pick = m[rng.integers(len(m), size=(rules.bootstrap, len(m)))]
                for b in range(rules.bootstrap):
                    w[b] = np.bincount(pick[b], minlength=D)
            s = _cell_stats(i, grid, rc, nbrs[i], w, reverse_fits(i, grid))
            st = {"identity_gain": s.identity_gain,
                  "identity_fit": s.identity_mse / max(scale["median_centred_mse"], EPS),
                  "best_fit_ratio": s.best_raw_mse / max(scale["median_mse"], EPS),
                  "response_pred_corr": s.response_pred_corr, "neighbour_coherence": s.coherence,
                  "bias_share": s.bias_share, "bias_t": s.bias_t}
            boot = _label(True, st, rules)
            if refrow is not None:
                boot = np.array([_with_reference(x, True, refrow, rules) for x in boot], dtype=object)
            c = float(np.mean(boot == lab))
        labels.append(lab)
        conf.append(c)
        ident.append(row["best_fit_cell"] if lab == "swap" else "")
    ev["diagnosis"] = labels
    ev["likely_identity"] = ident
    ev["confidence"] = conf
    if ref is not None:
        ev = ev.merge(reference.assign(cell=reference["cell"].astype(str)), on="cell", how="left")
    return ev


def _with_reference(lab: str, flagged: bool, ref: pd.Series, rules: Rules) -> str:
    """Cross-screen evidence (see ``diagnose``)."""
    agree = ref.get("screen_agreement", np.nan)
    m_ref, m_this = ref.get("model_ref_corr", np.nan), ref.get("model_this_corr", np.nan)
    if not (flagged and np.isfinite(agree)):
        return lab
    model_prefers_ref = np.isfinite(m_ref) and np.isfinite(m_this) and m_ref > m_this
    if lab in ("label_noise", "shift") and agree >= rules.ref_agree and not model_prefers_ref:
        return "distinct"
    if lab in ("none", "distinct") and agree < rules.ref_agree / 2 and model_prefers_ref:
        return "replicate_disagreement"
    return lab


# ---------------------------------------------------------------------------
# cross-screen agreement
# ---------------------------------------------------------------------------
def _pair_means(df: pd.DataFrame) -> pd.Series:
    d = df.assign(cell=df["cell"].astype(str), drug=df["drug"].astype(str))
    return d.groupby(["cell", "drug"])["label"].mean()


def cross_screen(this: pd.DataFrame, ref: pd.DataFrame, grid: Grid | None = None, min_drugs: int = 5) -> pd.DataFrame:
    """Per cell in both screens: agreement of drug-centred responses on the shared (cell, drug) pairs.

    ``this`` and ``ref``: cell, drug, label (replicates averaged). Each screen is centred
    by its drug medians over the cells the two share, so a drug's scale in one screen does
    not count as disagreement. Columns: cell, shared_drugs, screen_agreement (Pearson r of
    the two centred profiles), screen_offset (mean of this - reference, centred), and with
    the held-out ``grid``: model_this_corr / model_ref_corr (the model's centred
    predictions against each screen) and model_ref_mse / model_this_mse.
    """
    a, b = _pair_means(this), _pair_means(ref)
    both = pd.concat({"this": a, "ref": b}, axis=1, join="inner").reset_index()
    cols = ["cell", "shared_drugs", "screen_agreement", "screen_offset"]
    if grid is not None:
        cols += ["model_this_corr", "model_ref_corr", "model_this_mse", "model_ref_mse"]
    if both.empty:
        return pd.DataFrame(columns=cols)
    for s in ("this", "ref"):  # medians: one corrupted cell does not move a drug's centre
        both[s + "_c"] = both[s] - both.groupby("drug")[s].transform("median")
    if grid is not None:
        gi, gd = grid.index(), {d: j for j, d in enumerate(grid.drugs)}
        ci = both["cell"].map(gi)
        dj = both["drug"].map(gd)
        ok = ci.notna() & dj.notna()
        p = np.full(len(both), np.nan)
        p[ok.to_numpy()] = grid.pred[ci[ok].astype(int).to_numpy(), dj[ok].astype(int).to_numpy()]
        both["pred"] = p
        # the model predicts this screen's scale: centre it by this screen's drug means
        both["pred_c"] = both["pred"] - both.groupby("drug")["this"].transform("median")
    rows = []
    for cell, g in both.groupby("cell"):
        if len(g) < min_drugs:
            continue
        r = {"cell": cell, "shared_drugs": len(g),
             "screen_agreement": float(np.corrcoef(g["this_c"], g["ref_c"])[0, 1]),
             "screen_offset": float((g["this_c"] - g["ref_c"]).mean())}
        if grid is not None:
            h = g.dropna(subset=["pred_c"])
            ok = len(h) >= min_drugs
            r["model_this_corr"] = float(np.corrcoef(h["pred_c"], h["this_c"])[0, 1]) if ok else np.nan
            r["model_ref_corr"] = float(np.corrcoef(h["pred_c"], h["ref_c"])[0, 1]) if ok else np.nan
            r["model_this_mse"] = float(((h["pred_c"] - h["this_c"]) ** 2).mean()) if ok else np.nan
            r["model_ref_mse"] = float(((h["pred_c"] - h["ref_c"]) ** 2).mean()) if ok else np.nan
        rows.append(r)
    return pd.DataFrame(rows, columns=cols)


def score_disagreement_correlation(scores: dict[str, pd.Series], agreement: pd.DataFrame) -> pd.DataFrame:
    """Spearman correlation of each method's cell score with cross-screen *disagreement*
    (1 - screen_agreement), over the cells both have. Rows: method, cells, spearman."""
    dis = (1.0 - agreement.set_index("cell")["screen_agreement"]).rename("dis")
    rows = []
    for name, s in scores.items():
        s = s.copy()
        s.index = s.index.astype(str)
        j = pd.concat([s.replace(-np.inf, np.nan).rename("s"), dis], axis=1, join="inner").dropna()
        rho = float(j["s"].rank().corr(j["dis"].rank())) if len(j) > 2 else np.nan
        rows.append({"method": name, "cells": len(j), "spearman": rho})
    return pd.DataFrame(rows)
