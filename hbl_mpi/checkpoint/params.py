"""``CkptParams``: the run's checkpoint settings (CANDLE's names), taken from ``RunConfig``.

The config validates every ``ckpt_*`` key once, with the other keys (``config.py``); this
class neither checks nor defaults anything: it is built by ``from_config`` alone, so the
checkpoint code can never disagree with the config about a default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from hbl_mpi.core.config import RunConfig


@dataclass(frozen=True)
class CkptParams:
    """CANDLE's checkpoint hyperparameters (same names), resolved for one run.

    ``ckpt_directory`` is the resolved checkpoint root (``OUT/ckpts`` when the config
    leaves it empty). ``metadata`` is run-level metadata copied into every
    ``ckpt-info.json`` (model preset, data checksum, run fingerprint, ...).
    """

    ckpt_restart_mode: str
    ckpt_save_best: bool
    ckpt_save_best_metric: str
    ckpt_skip_epochs: int
    ckpt_save_interval: int
    ckpt_checksum: bool
    ckpt_keep_mode: str
    ckpt_keep_limit: int
    ckpt_directory: str
    ckpt_enabled: bool
    metadata: dict[str, Any]

    @classmethod
    def from_config(cls, cfg: RunConfig, metadata: dict[str, Any] | None = None) -> "CkptParams":
        """From a validated ``RunConfig``; ``metadata`` adds to the config's own (model, seed...)."""
        meta = {"model": cfg.model, "strategy": cfg.strategy, "inherit": cfg.inherit, "seed": cfg.seed,
                "n": cfg.n, "s": cfg.s}
        meta.update(metadata or {})
        return cls(
            ckpt_restart_mode=cfg.ckpt_restart_mode,
            ckpt_save_best=cfg.ckpt_save_best,
            ckpt_save_best_metric=cfg.ckpt_save_best_metric,
            ckpt_skip_epochs=cfg.ckpt_skip_epochs,
            ckpt_save_interval=cfg.ckpt_save_interval,
            ckpt_checksum=cfg.ckpt_checksum,
            ckpt_keep_mode=cfg.ckpt_keep_mode,
            ckpt_keep_limit=cfg.ckpt_keep_limit,
            ckpt_directory=cfg.ckpt_directory or os.path.join(cfg.out, "ckpts"),
            ckpt_enabled=cfg.ckpt_enabled,
            metadata=meta,
        )

    @classmethod
    def for_run(cls, cfg: RunConfig, data_checksum: str, fingerprint: str) -> "CkptParams":
        """The run's parameters: every ckpt-info.json carries the data checksum and fingerprint."""
        return cls.from_config(cfg, {"data_checksum": data_checksum, "run_fingerprint": fingerprint})
