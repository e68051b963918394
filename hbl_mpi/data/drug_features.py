"""Drug features from SMILES with RDKit: descriptors (prepared: imputed, log-compressed,
standardisable) and Morgan fingerprints. Every real-data reader (GDSC, CCLE, IMPROVE)
builds its drug feature groups here, so the same molecule gets the same features whichever
study it comes from. RDKit is imported only when a reader needs it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hbl_mpi.core.errors import InputError

LOG_COMPRESS_ABOVE = 1e6
"""Descriptor columns with a larger magnitude are log-compressed before standardising."""

MORGAN_RADIUS = 2


@dataclass
class DrugFeatures:
    """Descriptors (prepared, float32) and fingerprints (0/1 float32) of ``drugs``."""

    drugs: list[str]
    descriptor_names: list[str]
    descriptors: np.ndarray
    fingerprints: np.ndarray
    imputed: dict[str, list[str]] = field(default_factory=dict)  # drug -> descriptors imputed
    log_compressed: list[str] = field(default_factory=list)
    dropped_descriptors: list[str] = field(default_factory=list)  # no finite value at all


def _rdkit():
    try:
        from rdkit import Chem, RDLogger, rdBase
        from rdkit.Chem import Descriptors, rdFingerprintGenerator
    except ImportError:
        raise InputError("GDSC drug features need RDKit: pip install rdkit (or pip install -e '.[chem]')") from None
    RDLogger.DisableLog("rdApp.*")
    return Chem, Descriptors, rdFingerprintGenerator, rdBase.rdkitVersion


def check_fp_bits(fp_bits) -> int:
    """The Morgan fingerprint width as an int in 1..65536, or an InputError."""
    try:
        fp_bits = int(fp_bits)
    except (TypeError, ValueError):
        raise InputError(f"fingerprint bits {fp_bits!r}: expected a positive integer") from None
    if not 1 <= fp_bits <= 1 << 16:
        raise InputError(f"fingerprint bits {fp_bits}: expected 1..65536")
    return fp_bits


def parse_smiles(smiles: dict[str, str]) -> tuple[dict, list[str]]:
    """RDKit molecules of the parseable SMILES, and the names that did not parse."""
    Chem = _rdkit()[0]
    mols, failed = {}, []
    for name, s in smiles.items():
        m = Chem.MolFromSmiles(s)
        if m is None:
            failed.append(name)
        else:
            mols[name] = m
    return mols, failed


def prepare_descriptors(raw: np.ndarray, names: list[str], drugs: list[str]):
    """Impute non-finite values, log-compress huge columns, standardise (see the module docstring).

    Returns (values float32, kept names, imputed {drug: [names]}, log-compressed names,
    dropped names).
    """
    x = np.array(raw, dtype=np.float64)
    finite = np.isfinite(x)
    keep = finite.any(axis=0)
    dropped = [n for n, k in zip(names, keep) if not k]
    x, finite = x[:, keep], finite[:, keep]
    names = [n for n, k in zip(names, keep) if k]
    imputed: dict[str, list[str]] = {}
    if not finite.all():
        med = np.array([np.median(x[finite[:, j], j]) for j in range(x.shape[1])])
        for i, j in zip(*np.nonzero(~finite)):
            imputed.setdefault(drugs[i], []).append(names[j])
            x[i, j] = med[j]
    big = np.abs(x).max(axis=0) > LOG_COMPRESS_ABOVE if len(x) else np.zeros(x.shape[1], bool)
    x[:, big] = np.sign(x[:, big]) * np.log1p(np.abs(x[:, big]))
    mean = x.mean(axis=0)
    sd = x.std(axis=0)
    z = np.where(sd > 0, (x - mean) / np.where(sd > 0, sd, 1.0), 0.0)
    return z.astype(np.float32), names, imputed, [n for n, b in zip(names, big) if b], dropped


def drug_features(mols: dict, drugs: list[str], fp_bits: int = 2048) -> DrugFeatures:
    """RDKit descriptors and Morgan fingerprints of ``drugs`` (names into ``mols``)."""
    _, Descriptors, rdFingerprintGenerator, _ = _rdkit()
    desc = list(Descriptors._descList)
    raw = np.empty((len(drugs), len(desc)), dtype=np.float64)
    for i, d in enumerate(drugs):
        for j, (_, fn) in enumerate(desc):
            try:
                raw[i, j] = float(fn(mols[d]))
            except Exception:  # an RDKit descriptor that fails on a molecule counts as missing
                raw[i, j] = np.nan
    names = [n for n, _ in desc]
    values, kept, imputed, logc, dropped = prepare_descriptors(raw, names, drugs)
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=MORGAN_RADIUS, fpSize=int(fp_bits))
    fps = np.zeros((len(drugs), int(fp_bits)), dtype=np.float32)
    for i, d in enumerate(drugs):
        fps[i] = gen.GetFingerprintAsNumPy(mols[d])
    return DrugFeatures(list(drugs), kept, values, fps, imputed, logc, dropped)
