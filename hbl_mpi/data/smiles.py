"""A drug feature group of one-hot SMILES characters (``drug.smiles``), for sequence models
over the molecule's string (tCNNs-style 1-D CNNs: ``hbl_mpi/models/smiles_cnn.py``).

Each drug's SMILES is read character by character, mapped into ``ALPHABET`` (any other
character to its last entry, ``?``), cut or padded (all-zero rows) to ``length``
positions and flattened position-major: feature ``p * len(ALPHABET) + k`` is 1 when
character ``p`` is ``ALPHABET[k]``. A model recovers the (length, alphabet) matrix with
``values.reshape(B, -1, len(ALPHABET))``.

The group is added only on request (``hbl_mpi data ... --smiles-onehot LENGTH``): the
default files, and so their checksums and every test pinned to them, do not change.
Synthetic drugs have no molecules: ``random_smiles`` gives each a random SMILES-like string
(atoms, bonds, branches, ring digits; not chemistry) drawn from its own RNG, so the other
synthetic tables are unchanged.
"""

from __future__ import annotations

import numpy as np

from hbl_mpi.core.errors import InputError
from hbl_mpi.data.dataset import DRUG, Dataset, FeatureGroup

GROUP = "drug.smiles"
ALPHABET = tuple("CNOSPFIBHrlcnospe()[]=#+-@/\\0123456789.%") + ("?",)
"""Characters of organic SMILES (Cl and Br as two characters); ``?``: any other."""
_INDEX = {c: i for i, c in enumerate(ALPHABET)}


def check_length(length: int) -> int:
    if not isinstance(length, int) or not 1 <= length <= 4096:
        raise InputError(f"--smiles-onehot {length!r}: the padded SMILES length must be in 1..4096")
    return length


def onehot(smiles: list[str], length: int) -> tuple[np.ndarray, int]:
    """(float32 (n, length * len(ALPHABET)) one-hot rows, how many strings were cut)."""
    a = len(ALPHABET)
    out = np.zeros((len(smiles), length * a), dtype=np.float32)
    cut = 0
    for i, s in enumerate(smiles):
        s = str(s)
        cut += len(s) > length
        for p, ch in enumerate(s[:length]):
            out[i, p * a + _INDEX.get(ch, a - 1)] = 1.0
    return out, cut


def smiles_group(smiles: list[str], length: int) -> FeatureGroup:
    """The ``drug.smiles`` group for drugs in data order (``smiles[i]`` of drug ``i``)."""
    values, _ = onehot(smiles, check_length(length))
    columns = [f"SM_{p:04d}_{k:02d}" for p in range(length) for k in range(len(ALPHABET))]
    return FeatureGroup(GROUP, DRUG, columns, values)


def random_smiles(rng: np.random.Generator, n: int, mean_length: int = 40) -> list[str]:
    """``n`` random SMILES-like strings (for synthetic drugs; not valid molecules)."""
    atoms = ["C", "C", "C", "c", "N", "O", "n", "S", "F", "Cl", "Br"]
    out = []
    for _ in range(n):
        parts, depth, ring = [], 0, 1
        while sum(map(len, parts)) < rng.poisson(mean_length):
            r = rng.random()
            if r < 0.1 and depth < 3:
                parts.append("(")
                depth += 1
            elif r < 0.2 and depth:
                parts.append(")")
                depth -= 1
            elif r < 0.27:
                parts.append("=")
            elif r < 0.32:
                parts.append(str(ring % 10))
                ring += 1
            parts.append(atoms[int(rng.integers(len(atoms)))])
        out.append("".join(parts) + ")" * depth)
    return out


def with_random_smiles(ds: Dataset, length: int, seed: int) -> Dataset:
    """``ds`` with a ``drug.smiles`` group of random SMILES-like strings (synthetic data)."""
    strings = random_smiles(np.random.default_rng([int(seed), 0x5A1E5]), ds.n_drugs)
    ds.groups.append(smiles_group(strings, length))
    ds.meta = {**ds.meta, "smiles": "random SMILES-like strings (synthetic drugs have no molecules)"}
    return ds
