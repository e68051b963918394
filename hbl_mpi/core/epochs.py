"""Epoch strategies: the epoch budget of a node as a function of its stage.

The paper's Table 1 (E = base epochs, s = stage, S = stages):
``F-20`` flat 20, ``F-10`` flat 10, ``LINE`` E*(S-s+1)//S, ``SQRT`` round(E/sqrt(s)),
``EXP2`` max(E // 2**(s-1), 1). ``LINE``/``SQRT``/``EXP2`` take E from the ``epochs``
config key; ``flat:E``, ``line:E``, ``sqrt:E``, ``exp2:E`` give E explicitly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hbl_mpi.core.errors import InputError

KINDS = ("flat", "line", "sqrt", "exp2")
MAX_EPOCHS = 10_000
"""Largest epoch budget E: a node of the paper trains 20 epochs, early stopping ends most
sooner. Beyond int64 the budget wrapped (``flat:99999999999999999999999`` recorded
``epochs_planned = -9.2e18``); any E near that is a typing slip (issue 28 item 6)."""
NAMED = {"F-20": ("flat", 20), "F-10": ("flat", 10), "LINE": ("line", None),
         "SQRT": ("sqrt", None), "EXP2": ("exp2", None)}


@dataclass(frozen=True)
class EpochStrategy:
    kind: str  # one of KINDS
    base: int  # E

    def budget(self, stage: int, stages: int) -> int:
        """Maximum epochs for a node at ``stage`` (1-based) of ``stages``."""
        if stage < 1 or stage > stages:
            raise ValueError(f"stage {stage} outside 1..{stages}")
        e = self.base
        if self.kind == "flat":
            return e
        if self.kind == "line":
            return max(e * (stages - stage + 1) // stages, 1)
        if self.kind == "sqrt":
            # round half away from zero, as the paper's table (20/sqrt(4) = 10, 20/sqrt(2) = 14.1 -> 14)
            return max(int(math.floor(e / math.sqrt(stage) + 0.5)), 1)
        return max(e // 2 ** (stage - 1), 1)

    def table(self, stages: int) -> list[int]:
        return [self.budget(s, stages) for s in range(1, stages + 1)]

    @property
    def label(self) -> str:
        for name, (k, b) in NAMED.items():
            if k == self.kind and (b == self.base or (b is None and self.base == 20)):
                return name
        return f"{self.kind}:{self.base}"


def parse_strategy(text: str, epochs: int = 20) -> EpochStrategy:
    """Parse ``F-20``, ``EXP2`` (E from ``epochs``) or ``exp2:12`` style strategy names."""
    t = str(text).strip()
    up = t.upper()

    def from_epochs() -> int:
        # LINE/SQRT/EXP2 (and bare kinds) take E from `epochs`: E = 0 would plan 0-epoch nodes
        if int(epochs) < 1:
            raise InputError(f"strategy {t!r} takes E from epochs, which must be >= 1; got {epochs}")
        if int(epochs) > MAX_EPOCHS:
            raise InputError(f"strategy {t!r} takes E from epochs, which must be <= {MAX_EPOCHS}; got {epochs}")
        return int(epochs)

    if up in NAMED:
        kind, base = NAMED[up]
        return EpochStrategy(kind, base if base is not None else from_epochs())
    if ":" in t:
        kind, _, num = t.partition(":")
        kind = kind.strip().lower()
        if kind in KINDS:
            try:
                base = int(num)
            except ValueError:
                raise InputError(f"strategy {t!r}: epochs after ':' must be an integer") from None
            if base < 1:
                raise InputError(f"strategy {t!r}: epochs must be >= 1")
            if base > MAX_EPOCHS:
                raise InputError(f"strategy {t!r}: epochs must be <= {MAX_EPOCHS}")
            return EpochStrategy(kind, base)
    if t.lower() in KINDS:
        return EpochStrategy(t.lower(), from_epochs())
    raise InputError(
        f"unknown strategy {t!r}; use one of F-20, F-10, LINE, SQRT, EXP2 or flat:E, line:E, sqrt:E, exp2:E"
    )
