"""Synthetic drug-response data with planted anomalous cells (docs/design.md §2.2).

Why this shape: the method under study must find cells that "hurt or resist learning"
from the per-cell validation error of models that never trained on them. That only
works if (a) clean responses are a learnable function of the *observed* features and
(b) each corruption breaks that function in the way its name says. So:

* each cell belongs to a tissue (cluster in a low-dimensional latent space); its
  expression profile is a noisy linear image of its latent vector, standardised per gene;
* each drug has a latent vector; its descriptors are a noisy linear image of it and its
  fingerprint bits are thresholded noisy projections of it;
* the *cell factors* are computed from the observed expression (least-squares read-out of
  the latent vector, then ``tanh`` of a random mixing) and the *drug factors* likewise
  from the descriptors and fingerprints; the response is
  ``AUC = sigmoid(mu + cell sensitivity + drug potency + cell-drug interaction) + noise``,
  clipped to [0, 1]. Nonlinear, low-dimensional, learnable from a few hundred cells.

Corruptions (a fraction of cells, kinds cycled over the chosen list):
``label_noise`` replaces the cell's responses with labels drawn from the other cells'
responses (same marginal distribution, unrelated to the cell); ``shift`` adds ``shift``
(default 0.25 AUC, about one label standard deviation) of random sign to all the cell's
responses, the sign flipped when clipping to [0, 1] would hide much of it; ``swap`` exchanges the expression profiles of two cells (a
misidentified cell line), preferring partners from different tissues, while their
responses stay those of their true profiles -- both cells of a pair are recorded;
``misid`` (not in the default list) gives the cell a near copy (``misid_noise`` per
standardised gene) of the expression profile of another, clean cell of its own tissue:
the one whose clean responses differ most from its own, while its responses stay its own
(a misidentified line, profiled as its look-alike). Exchanged profiles (``swap``) and
label corruptions are learned as the cell's own quirk: a flexible model fits them where
no other cell lies, and the other cells' error does not move measurably
(docs/findings/impact.md §8.5). Two near-identical profiles with conflicting responses cannot
both be fitted, so a ``misid`` cell harms another cell by construction: its partner, a
clean cell, whose predictions are pulled towards the impostor's responses. The partner
stays clean in the truth; ``meta["misid_of"]`` names it.

Drug anomalies (``drug_anomaly_fraction`` of the drugs, default 0, kinds cycled over
``drug_anomaly_kinds``), for the drugs partition (``partition = "drugs"``):
``wrong_assay`` gives the drug labels from another assay -- an unrelated response function
of the cells (its own random read-out of the cell factors, unrelated to the drug's
features) -- ``drug_noise`` replaces its labels with labels drawn from the other drugs'
responses, ``drug_shift`` adds ``shift`` of random sign to all its responses. Their truth
is the Dataset's ``drug_truth`` (drug, kind), stored in the file's ``truth`` table with a
``unit`` column. They are drawn from a generator of their own, after everything else, so
the default (no drug anomalies) output is exactly what it was.

The clean part never depends on the anomaly settings: the same seed with
``anomaly_fraction=0`` gives the same features (before swaps) and the same clean labels,
which is how the tests measure how different the corrupted cells are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import pandas as pd

from hbl_mpi.core.seeding import spawned
from hbl_mpi.data.dataset import CELL, DRUG, Dataset, FeatureGroup
from hbl_mpi.core.errors import InputError

KINDS = ("label_noise", "shift", "swap", "misid")
DEFAULT_KINDS = ("label_noise", "shift", "swap")
DRUG_KINDS = ("wrong_assay", "drug_noise", "drug_shift")
DEFAULT_DRUG_KINDS = ("wrong_assay", "drug_noise")


@dataclass(frozen=True)
class SynthSpec:
    """Every knob of the generator; presets are instances, overrides replace fields."""

    cells: int = 240
    drugs: int = 96
    density: float = 0.8  # fraction of (cell, drug) pairs with a response
    rows: int | None = None  # exact number of rows instead of density
    cell_features: int = 128
    descriptors: int = 96
    fingerprints: int = 64  # 0: no fingerprint group
    latent: int = 6  # dimension of the cell and drug latent spaces
    tissues: int = 8  # clusters of cells
    noise: float = 0.03  # std of the label noise (AUC units)
    anomaly_fraction: float = 0.05
    anomaly_kinds: tuple = DEFAULT_KINDS
    shift: float = 0.25  # AUC units added (random sign) to every response of a shifted cell
    misid_noise: float = 0.05  # sd (standardised gene units) of a misid cell's copy of its partner's profile
    drug_anomaly_fraction: float = 0.0  # fraction of drugs corrupted (the drugs partition's truth)
    drug_anomaly_kinds: tuple = DEFAULT_DRUG_KINDS

    def validate(self) -> "SynthSpec":
        def bad(msg):
            raise InputError(f"synthetic data: {msg}")

        if self.cells < 2:
            bad(f"cells = {self.cells}: need at least 2")
        if self.drugs < 1:
            bad(f"drugs = {self.drugs}: need at least 1")
        if self.cell_features < 1 or self.descriptors < 1:
            bad(f"cell_features = {self.cell_features}, descriptors = {self.descriptors}: need at least 1 each")
        if self.fingerprints < 0:
            bad(f"fingerprints = {self.fingerprints}: need >= 0")
        if not 0 < self.density <= 1:
            bad(f"density = {self.density}: need 0 < density <= 1")
        if self.rows is not None and not max(self.cells, self.drugs) <= self.rows <= self.cells * self.drugs:
            bad(f"rows = {self.rows}: need between max(cells, drugs) = {max(self.cells, self.drugs)} and "
                f"cells x drugs = {self.cells * self.drugs}")
        if self.latent < 1 or self.tissues < 1:
            bad(f"latent = {self.latent}, tissues = {self.tissues}: need at least 1 each")
        if self.noise < 0:
            bad(f"noise = {self.noise}: need >= 0")
        if not 0 <= self.anomaly_fraction <= 0.5:
            bad(f"anomaly_fraction = {self.anomaly_fraction}: need 0 <= fraction <= 0.5")
        kinds = tuple(self.anomaly_kinds)
        if not kinds or any(k not in KINDS for k in kinds) or len(set(kinds)) != len(kinds):
            bad(f"anomaly_kinds = {kinds}: choose distinct kinds from {', '.join(KINDS)}")
        if not 0 <= self.shift <= 0.9:
            bad(f"shift = {self.shift}: need 0 <= shift <= 0.9 (AUC units)")
        dkinds = tuple(self.drug_anomaly_kinds)
        if not dkinds or any(k not in DRUG_KINDS for k in dkinds) or len(set(dkinds)) != len(dkinds):
            bad(f"drug_anomaly_kinds = {dkinds}: choose distinct kinds from {', '.join(DRUG_KINDS)}")
        if not 0 <= self.drug_anomaly_fraction <= 0.5:
            bad(f"drug_anomaly_fraction = {self.drug_anomaly_fraction}: need 0 <= fraction <= 0.5")
        if not 0 <= self.misid_noise <= 1:
            bad(f"misid_noise = {self.misid_noise}: need 0 <= misid_noise <= 1 (standardised gene units)")
        # ceilings (issue 28: bounds on every number): beyond them a slip allocated terabytes
        # (a MemoryError traceback) or overflowed the noise into inf
        for name, hi in SIZE_LIMITS.items():
            if getattr(self, name) is not None and getattr(self, name) > hi:
                bad(f"{name} = {getattr(self, name)}: need <= {hi:,}")
        if self.noise > 10:
            bad(f"noise = {self.noise}: need <= 10 (AUC units; labels lie in [0, 1])")
        rows = self.rows if self.rows is not None else self.density * self.cells * self.drugs
        nbytes = 4 * (self.cells * self.cell_features + self.drugs * (self.descriptors + self.fingerprints)
                      + 4 * rows)
        if nbytes > MAX_BYTES:
            bad(f"the data would take about {nbytes / 2**30:,.0f} GiB; at most {MAX_BYTES / 2**30:g} GiB")
        return self


SIZE_LIMITS = {"cells": 1_000_000, "drugs": 1_000_000, "cell_features": 100_000, "descriptors": 100_000,
               "fingerprints": 100_000, "latent": 1_000, "tissues": 100_000}
"""Largest sizes of a synthetic data set (Top21 has 1,000 cells x 800 drugs, 942 + 5,270 columns)."""
MAX_BYTES = 64 * 2**30
"""Largest normalised size (features + responses) a synthetic data set may take in memory."""


PRESETS: dict[str, SynthSpec] = {
    # the demo default: ~18k rows, an epoch of a small MLP takes a fraction of a second
    "small": SynthSpec(),
    # the real Top21 file's shape: 942 expression + 5,270 descriptor columns, 529,940 rows
    "top21": SynthSpec(cells=1000, drugs=800, rows=529_940, cell_features=942, descriptors=5270,
                       fingerprints=0, latent=8, tissues=21),
}


def make_spec(preset: str = "small", **overrides) -> SynthSpec:
    if preset not in PRESETS:
        raise InputError(f"synthetic preset {preset!r}: choose from {', '.join(PRESETS)}")
    valid = {f.name for f in fields(SynthSpec)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise InputError(f"synthetic data: unknown option(s) {', '.join(unknown)} (valid: {', '.join(sorted(valid))})")
    for key in ("anomaly_kinds", "drug_anomaly_kinds"):
        if key in overrides:
            k = overrides[key]
            overrides[key] = tuple(k.split(",")) if isinstance(k, str) else tuple(k)
    for name in ("cells", "drugs", "cell_features", "descriptors", "fingerprints", "latent", "tissues", "rows"):
        if overrides.get(name) is not None:
            overrides[name] = int(overrides[name])
    spec = replace(PRESETS[preset], **overrides)
    if "density" in overrides and "rows" not in overrides:
        spec = replace(spec, rows=None)  # an explicit density beats a preset's exact row count
    return spec.validate()


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre and scale each column; also return the scale (to map loadings into this space)."""
    x = x - x.mean(axis=0, keepdims=True)
    sd = x.std(axis=0, keepdims=True)
    sd = np.where(sd > 0, sd, 1.0)
    return x / sd, sd


def _ids(prefix: str, n: int) -> np.ndarray:
    w = max(4, len(str(n)))
    return np.array([f"SYN.{prefix}{i + 1:0{w}d}" for i in range(n)], dtype=object)


def _pairs(rng: np.random.Generator, spec: SynthSpec) -> tuple[np.ndarray, np.ndarray]:
    """Which (cell, drug) pairs have a response; every cell and drug gets at least one."""
    C, D = spec.cells, spec.drugs
    if spec.rows is not None:
        flat = np.sort(rng.choice(C * D, size=spec.rows, replace=False))
    else:
        flat = np.flatnonzero(rng.random(C * D) < spec.density)
    cell, drug = flat // D, flat % D
    extra = []
    for c in np.setdiff1d(np.arange(C), cell):
        extra.append(c * D + rng.integers(D))
    for d in np.setdiff1d(np.arange(D), drug):
        extra.append(rng.integers(C) * D + d)
    if extra:
        flat = np.unique(np.concatenate([flat, np.asarray(extra, dtype=flat.dtype)]))
        if spec.rows is not None and len(flat) > spec.rows:
            # keep the exact row count: drop surplus pairs from cells and drugs that have several
            cnt_c = np.bincount(flat // D, minlength=C)
            cnt_d = np.bincount(flat % D, minlength=D)
            drop = []
            for i in rng.permutation(len(flat)):
                if len(flat) - len(drop) == spec.rows:
                    break
                c, d = flat[i] // D, flat[i] % D
                if cnt_c[c] > 1 and cnt_d[d] > 1:
                    cnt_c[c] -= 1
                    cnt_d[d] -= 1
                    drop.append(i)
            flat = np.delete(flat, drop)
        cell, drug = flat // D, flat % D
    return cell.astype(np.int32), drug.astype(np.int32)


def _plant(rng: np.random.Generator, spec: SynthSpec, tissue: np.ndarray) -> tuple[list, list]:
    """Choose the corrupted cells and their kinds; swaps come in pairs from different tissues."""
    C = spec.cells
    n = int(round(spec.anomaly_fraction * C))
    if spec.anomaly_fraction > 0:
        n = max(n, 1)
    kinds = [spec.anomaly_kinds[i % len(spec.anomaly_kinds)] for i in range(n)]
    if kinds.count("swap") % 2:
        if n < C:
            kinds.append("swap")  # a swap needs a partner: one more corrupted cell
        else:
            kinds.remove("swap")
    chosen = rng.choice(C, size=len(kinds), replace=False)
    assigned = list(zip(chosen.tolist(), kinds))
    swappers = [c for c, k in assigned if k == "swap"]
    pairs = []
    free = list(swappers)
    while free:
        a = free.pop(0)
        j = next((i for i, b in enumerate(free) if tissue[b] != tissue[a]), 0)
        pairs.append((a, free.pop(j)))
    return assigned, pairs


def _misid_partners(rng: np.random.Generator, misid: list, corrupted: set, tissue: np.ndarray,
                    cell: np.ndarray, drug: np.ndarray, label: np.ndarray, C: int, D: int) -> dict[int, int]:
    """For each misid cell, the clean cell of its tissue whose clean responses differ most.

    Dissimilarity is the mean squared difference over the drugs both were measured on; a
    partner serves one impostor; with no clean cell left in the tissue, any clean cell.
    """
    prof = np.full((C, D), np.nan)
    prof[cell, drug] = label
    used: set[int] = set()
    out = {}
    for b in misid:
        pool = [c for c in range(C) if c not in corrupted and c not in used]
        if not pool:
            break
        same = [c for c in pool if tissue[c] == tissue[b]] or pool
        with np.errstate(invalid="ignore"):
            diff = np.nanmean((prof[same] - prof[b]) ** 2, axis=1) if D else np.zeros(len(same))
        diff = np.where(np.isnan(diff), -1.0, diff)
        best = np.flatnonzero(diff == diff.max())
        y = same[int(best[rng.integers(len(best))])]
        used.add(y)
        out[b] = y
    return out


def _plant_drugs(seed: int, spec: SynthSpec, h: np.ndarray, cell: np.ndarray, drug: np.ndarray,
                 label: np.ndarray) -> dict[int, str]:
    """Corrupt ``drug_anomaly_fraction`` of the drugs in ``label`` (in place); drug -> kind.

    A generator of its own (the seventh child of the seed): the rest of the data never
    depends on whether drugs are planted.
    """
    n = int(round(spec.drug_anomaly_fraction * spec.drugs))
    if spec.drug_anomaly_fraction <= 0:
        return {}
    n = max(n, 1)
    rng = spawned(seed, 7)[6]
    kinds = [spec.drug_anomaly_kinds[i % len(spec.drug_anomaly_kinds)] for i in range(n)]
    chosen = rng.choice(spec.drugs, size=n, replace=False)
    kind_of = dict(zip(chosen.tolist(), kinds))
    clean_rows = np.flatnonzero(~np.isin(drug, chosen))
    k = h.shape[1]
    for d, kd in sorted(kind_of.items()):
        rows = np.flatnonzero(drug == d)
        if kd == "wrong_assay":  # another assay: its own random response function of the cells
            mix = rng.normal(size=(k, k)) / np.sqrt(k)
            other = (np.tanh(1.5 * h @ mix) @ rng.normal(size=k))[cell[rows]]
            # unrelated by construction: the part a line of the drug's own responses explains is removed
            own = label[rows] - label[rows].mean()
            other = other - other.mean()
            other = other - own * (own @ other) / max(float(own @ own), 1e-12)
            other = 1.2 * other / (other.std() or 1.0)
            new = 1.0 / (1.0 + np.exp(-(rng.normal(0.0, 0.5) + other)))
            label[rows] = np.clip(new + rng.normal(0.0, spec.noise, size=len(rows)), 0.0, 1.0)
        elif kd == "drug_noise":  # labels of other drugs' rows: same marginal, unrelated to this drug
            label[rows] = label[rng.choice(clean_rows, size=len(rows), replace=True)]
        else:  # drug_shift
            sign = -1.0 if label[rows].mean() > 0.5 else 1.0  # towards the roomier side of [0, 1]
            label[rows] = np.clip(label[rows] + sign * spec.shift, 0.0, 1.0)
    return kind_of


def synthesize(preset: str = "small", seed: int = 0, **overrides) -> Dataset:
    """Generate a deterministic synthetic data set (docs/design.md §2.2); see the module docstring.

    ``overrides`` are fields of ``SynthSpec``: cells, drugs, density, rows, cell_features,
    descriptors, fingerprints, latent, tissues, noise, anomaly_fraction, anomaly_kinds,
    shift, misid_noise. The same (preset, seed, overrides) always gives the same Dataset.
    """
    spec = make_spec(preset, **overrides)
    seed = int(seed)
    r_cell, r_drug, r_resp, r_pairs, r_noise, r_anom = spawned(seed, 6)
    C, D, k = spec.cells, spec.drugs, spec.latent

    # cells: tissue clusters in latent space -> expression
    tissue = r_cell.integers(spec.tissues, size=C)
    centres = r_cell.normal(size=(spec.tissues, k))
    z = centres[tissue] + 0.6 * r_cell.normal(size=(C, k))
    load = r_cell.normal(size=(k, spec.cell_features)) / np.sqrt(k)
    expr, sd = _standardise(z @ load + 0.5 * r_cell.normal(size=(C, spec.cell_features)))

    # drugs: latent -> descriptors (continuous) and fingerprints (sparse bits)
    w = r_drug.normal(size=(D, k))
    dload = r_drug.normal(size=(k, spec.descriptors)) / np.sqrt(k)
    desc, dsd = _standardise(w @ dload + 0.5 * r_drug.normal(size=(D, spec.descriptors)))
    fp = None
    if spec.fingerprints:
        fload = r_drug.normal(size=(k, spec.fingerprints)) / np.sqrt(k)
        bias = r_drug.normal(-1.0, 0.5, size=spec.fingerprints)
        fp = ((w @ fload + bias + 0.5 * r_drug.logistic(size=(D, spec.fingerprints))) > 0).astype(np.float32)

    # factors are fixed functions of the observed features (what a network can see):
    # a linear read-out of the latent vector, then a nonlinear mixing
    z_hat = expr @ np.linalg.pinv(load / sd)
    mix_c = r_resp.normal(size=(k, k)) / np.sqrt(k)
    h = np.tanh(1.5 * z_hat @ mix_c)  # (C, k)
    w_hat = desc @ np.linalg.pinv(dload / dsd)
    if fp is not None:
        w_fp, _ = _standardise((fp - fp.mean(axis=0)) @ fload.T)
        w_hat = 0.7 * w_hat + 0.3 * w_fp
    mix_d = r_resp.normal(size=(k, k)) / np.sqrt(k)
    g = np.tanh(1.5 * w_hat @ mix_d)  # (D, k)
    v_c = r_resp.normal(size=k)
    v_d = r_resp.normal(size=k)
    inter = r_resp.normal(size=k)

    cell, drug = _pairs(r_pairs, spec)
    sens = h @ v_c
    sens = 0.9 * (sens - sens.mean()) / (sens.std() or 1.0)
    pot = g @ v_d
    pot = 0.7 * (pot - pot.mean()) / (pot.std() or 1.0)
    logit = 1.0 + sens[cell] + pot[drug] + 1.2 * np.sum(h[cell] * g[drug] * inter, axis=1) / np.sqrt(k)
    eps = r_noise.normal(0.0, 1.0, size=len(cell)) * spec.noise

    # anomalies
    assigned, swap_pairs = _plant(r_anom, spec, tissue)
    kind_of = dict(assigned)
    label = np.clip(1.0 / (1.0 + np.exp(-logit)) + eps, 0.0, 1.0)
    shifted = np.array([c for c, kd in assigned if kd == "shift"], dtype=np.int64)
    if len(shifted):
        # a random sign, flipped when clipping to [0, 1] would eat more than a quarter of the
        # bias in that direction but less in the other (a bias must stay a bias)
        sign = np.where(r_anom.random(len(shifted)) < 0.5, -1.0, 1.0)
        for i, c in enumerate(shifted):
            lab_c = label[cell == c]
            eff = {s: abs(np.mean(np.clip(lab_c + s * spec.shift, 0.0, 1.0) - lab_c)) for s in (-1.0, 1.0)}
            if eff[sign[i]] < 0.75 * spec.shift and eff[-sign[i]] > eff[sign[i]]:
                sign[i] = -sign[i]
        bump = np.zeros(C)
        bump[shifted] = sign * spec.shift
        label = np.clip(label + bump[cell], 0.0, 1.0)
    noisy = np.array([c for c, kd in assigned if kd == "label_noise"], dtype=np.int64)
    if len(noisy):
        is_noisy = np.isin(cell, noisy)
        pool = np.flatnonzero(~np.isin(cell, list(kind_of)))  # rows of uncorrupted cells
        label[is_noisy] = label[r_anom.choice(pool, size=int(is_noisy.sum()), replace=True)]
    for a, b in swap_pairs:
        expr[[a, b]] = expr[[b, a]]
    misid = [c for c, kd in assigned if kd == "misid"]
    misid_of = _misid_partners(r_anom, misid, set(kind_of), tissue, cell, drug, label, C, D) if misid else {}
    for b, y in misid_of.items():
        expr[b] = expr[y] + spec.misid_noise * r_anom.normal(size=expr.shape[1])

    drug_kind_of = _plant_drugs(seed, spec, h, cell, drug, label)

    cell_ids, drug_ids = _ids("C", C), _ids("D", D)
    groups = [FeatureGroup("cell.rnaseq", CELL, [f"GE_G{i + 1:04d}" for i in range(spec.cell_features)],
                           expr.astype(np.float32)),
              FeatureGroup("drug.descriptors", DRUG, [f"DD_{i + 1:04d}" for i in range(spec.descriptors)],
                           desc.astype(np.float32))]
    if fp is not None:
        groups.append(FeatureGroup("drug.fingerprints", DRUG, [f"FP_{i:04d}" for i in range(spec.fingerprints)], fp))
    truth = None
    if assigned:
        order = sorted(kind_of)
        truth = pd.DataFrame({"cell": cell_ids[order].astype(object),
                              "kind": np.array([kind_of[c] for c in order], dtype=object)})
    spec_meta = asdict(spec)
    if not drug_kind_of:  # files without planted drugs stay byte for byte what they were
        spec_meta = {k: v for k, v in spec_meta.items() if not k.startswith("drug_anomaly")}
    meta = {"generator": "synth", "preset": preset, "seed": seed, "spec": spec_meta,
            "swap_pairs": [[str(cell_ids[a]), str(cell_ids[b])] for a, b in swap_pairs],
            "tissue": {str(cell_ids[c]): int(tissue[c]) for c in range(C)}}
    if misid_of:  # only then: files of the default kinds stay byte for byte what they were
        meta["misid_of"] = {str(cell_ids[b]): str(cell_ids[y]) for b, y in misid_of.items()}
    drug_truth = None
    if drug_kind_of:
        order = sorted(drug_kind_of)
        drug_truth = pd.DataFrame({"drug": drug_ids[order].astype(object),
                                   "kind": np.array([drug_kind_of[d] for d in order], dtype=object)})
    return Dataset(cell_ids=cell_ids, drug_ids=drug_ids, groups=groups,
                   cell_index=cell, drug_index=drug, label=label.astype(np.float32),
                   truth=truth, source=f"synth:{preset}:seed={seed}", meta=meta, drug_truth=drug_truth)

