"""Every random stream of the program, derived from the config's ``seed`` in one place.

Reproducibility is the product's promise: serial, any rank count and ``--restart`` give the
same tree bit for bit, and the same (preset, seed) gives the same synthetic data. That
holds only if every stream is a pure function of the seed and of *what* it is for (a
node's epoch, the plan's cell order), never of the process or of the order things ran in.
Three derivations cover every use:

* ``derive_seed(seed, *labels)``: a 63-bit seed named by labels (a node and an epoch):
  sha256 of ``"seed/label/..."``, stable across processes and Python versions. The
  trainer's batch order and dropout stream use it.
* ``spawned(seed, n)``: ``n`` independent numpy generators from one seed (numpy's
  ``SeedSequence.spawn``): the plan's cell, drug and holdout orders; the synthetic data.
* ``generator(seed, *words)``: one numpy generator keyed by integer words
  (``SeedSequence([seed, *words])``): a stream that must differ from the others drawn
  from the same seed (the K-fold baselines' folds), or plain ``default_rng(seed)``
  without words (the diagnosis' bootstrap, the data split).

The torch side (the model's seeded initialisation) is ``train.flat_state`` /
``uno.initial_state``: ``torch.manual_seed`` under ``fork_rng`` with the run's seed.
"""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(seed: int, *labels: object) -> int:
    """A 63-bit seed from (seed, labels...): stable across processes and Python versions."""
    h = hashlib.sha256("/".join(str(x) for x in (seed, *labels)).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def spawned(seed: int, n: int) -> list[np.random.Generator]:
    """``n`` independent generators from one seed (numpy's ``SeedSequence.spawn``)."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(n)]


def generator(seed: int, *words: int) -> np.random.Generator:
    """One generator from ``seed``, keyed by integer ``words`` (none: ``default_rng(seed)``)."""
    if not words:
        return np.random.default_rng(seed)
    return np.random.default_rng(np.random.SeedSequence([int(seed), *(int(w) for w in words)]))
