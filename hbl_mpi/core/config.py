"""Run configuration: a TOML file plus ``--set key=value`` overrides, validated up front.

Every key is a field of ``RunConfig`` (its type and default); ``DOCS`` gives its line of
documentation (docs/configuration.md's key table is generated from it, a test keeps them in sync),
``CHOICES``/``MINIMUM``/``validate`` its checks. Unknown keys get the nearest valid name
as a suggestion; every problem is an ``InputError`` (one line, exit 2) raised before any
rank trains.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hbl_mpi.core.epochs import MAX_EPOCHS, parse_strategy
from hbl_mpi.core.errors import InputError


@dataclass
class RunConfig:
    """All settings of one run (every key: docs/configuration.md)."""

    data: str = ""
    cell_metadata: str = ""
    n: int = 4
    s: int = 3
    order: str = "shuffled"
    seed: int = 0
    partition: str = "cells"
    groups: str = ""
    holdout_fraction: float = 0.1
    expand: str = "full"
    expand_budget: float = 0.25
    expand_full_stages: int = 1
    expand_score: str = "depth_weighted"
    expand_suspects: int = 0
    strategy: str = "EXP2"
    epochs: int = 20
    patience: int = 3
    min_delta: float = 0.0
    batch_size: int = 256
    batch_order: str = "node"
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.0
    weight_decay: float = 0.0
    model: str = "small"
    model_params: dict = field(default_factory=dict)
    dropout: float = -1.0
    inherit: str = "best"
    device: str = "cpu"
    threads: int = 0
    group_size: int = 1
    out: str = "out"
    flush_seconds: float = 2.0
    progress_every: int = 0
    stall_seconds: float = 0.0
    # checkpoints (CANDLE names, docs/design.md §8)
    ckpt_restart_mode: str = "auto"
    ckpt_save_best: bool = True
    ckpt_save_best_metric: str = "val_loss"
    ckpt_skip_epochs: int = 0
    ckpt_save_interval: int = 1
    ckpt_checksum: bool = True
    ckpt_keep_mode: str = "linear"
    ckpt_keep_limit: int = 2
    ckpt_directory: str = ""
    ckpt_enabled: bool = False
    # fault injection (tests only; off by default)
    fault_fail_nodes: list = field(default_factory=list)
    fault_nan_nodes: list = field(default_factory=list)
    fault_slow_nodes: list = field(default_factory=list)
    fault_slow_seconds: float = 0.0
    fault_crash_rank: int = -1
    fault_crash_after: int = 0
    fault_crash_kind: str = "exit"

    @property
    def epoch_strategy(self):
        return parse_strategy(self.strategy, self.epochs)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved_dropout(self) -> float | None:
        return None if self.dropout < 0 else self.dropout


DOCS: dict[str, str] = {
    "data": "path of the input HDF5 file (CANDLE Uno format); relative paths are relative to the config file",
    "cell_metadata": "CSV (`cell` + any columns) of cell metadata for this run, in place of the data file's own (`data annotate`); checked against the data's cells; copied into results.h5 for the report; relative paths are relative to the config file",
    "n": "children per node (parts per level), >= 2",
    "s": "number of stages (tree depth below the root), >= 1; deeper than the stage at which every validation set is one cell is refused (the error names the largest useful s)",
    "order": "`shuffled` (ids permuted by `seed`) or `ordered` (sorted ids, as CANDLE)",
    "seed": "plan seed: partition order, holdout rows, initial weights, per-node shuffles",
    "partition": "`cells` (hold out cell lines), `cells+drugs` (crossed cell x drug blocks) or `drugs` (hold out drugs: the ranking, report and curation are per drug; docs/findings/drugs.md)",
    "groups": "a cell-metadata column: the tree's first split holds out one metadata group per stage-1 node (one node per group; beyond max(n, 16) groups the smallest are pooled into the last node; cells with no value form the group `NA`), deeper stages split each group as usual; the report's group impact (`group_impact.csv`) comes from these contrasts: train them alike (`patience` >= the stage-1 epochs, `inherit = \"last\"`, `batch_order = \"family\"`) and give `report` >= 3 replicate runs (other seeds; s = 1 suffices) for an sd that holds the training noise; empty = no groups (docs/findings/group-impact.md)",
    "holdout_fraction": "fraction of response rows held out as the common test set, in [0, 0.5]",
    "expand": "`full` (every node of the tree) or `adaptive` (a node gets children only when the expansion rule chooses it; docs/findings/adaptive.md §10)",
    "expand_budget": "adaptive: fraction in (0, 1] of the full tree's planned row-epochs (epochs planned x training rows) the run may spend",
    "expand_full_stages": "adaptive: stages 1..this are created in full before the rule decides (1 <= value <= s)",
    "expand_score": "adaptive: the cell score that picks the suspects: depth_weighted, deepest_log_ratio, mean_log_ratio, max_log_ratio, min_log_ratio, mean_robust_z or pooled_ratio (ranking.py)",
    "expand_suspects": "adaptive: per stage, expand only nodes holding one of this many best-scored cells; 0 = no quota (by score until the budget)",
    "strategy": "epoch strategy: F-20, F-10, LINE, SQRT, EXP2, or flat:E, line:E, sqrt:E, exp2:E",
    "epochs": "base epochs E for LINE, SQRT, EXP2",
    "patience": "early stopping patience in epochs (on val_loss)",
    "min_delta": "smallest val_loss decrease that counts as an improvement",
    "batch_size": "rows per training batch (global batch when group_size > 1)",
    "batch_order": "`node` (each node shuffles its rows with its own seed) or `family` (siblings filter one shared shuffle of all rows, seeded by their parent: common random numbers, so what differs between siblings is their data; docs/findings/impact.md §8.8)",
    "learning_rate": "the optimizer's learning rate",
    "optimizer": "`adam` (default), `adamw` (decoupled weight decay) or `sgd` (with `momentum`); its state is forked with the weights (docs/models.md). A CPU rank group (group_size > 1) runs adam or adamw only",
    "momentum": "sgd: momentum in [0, 1) (0 = plain SGD, no momentum buffer)",
    "weight_decay": "weight decay >= 0: L2 for adam and sgd, decoupled for adamw",
    "model": "Uno preset: `small` (CPU: encoders 128-64, top 128-64, no dropout), `paper` (CANDLE's Top21 model: encoders 3x1000, top 5x1000, dropout 0.1; 16.2 M parameters at Top21 widths) or `tiny` (tests); or a plug-in `package.module:build` or `path/to/file.py:build` (relative to the config file): docs/models.md",
    "model_params": "the table `[model_params]` handed to a plug-in model's `build(inputs, params)`; `--set model_params.KEY=VALUE` sets one entry",
    "dropout": "Uno presets: dropout rate overriding the preset's; negative = the preset's value (a plug-in takes its own from model_params)",
    "inherit": "`best` (parent's best val_loss epoch) or `last` (parent's last epoch, as CANDLE)",
    "device": "`cpu`, `cuda`, or `auto` (cuda when available)",
    "threads": "torch intra-op threads per rank; 0 = the rank's share of the host's cores",
    "group_size": "ranks that train one model data-parallel (must divide the workers on each host)",
    "out": "output directory (results.h5, logs); relative to the working directory",
    "flush_seconds": "rank 0 rewrites results.h5 atomically at most this often while nodes finish",
    "progress_every": "print a progress line every this many finished nodes; 0 = automatic",
    "stall_seconds": "abort (exit 4) when a worker has not reported for this many seconds on one node; 0 = automatic: 10 x the node's expected time (its rows x epochs at the median rate of finished nodes), at least 600 s, none before the first node finishes",
    "ckpt_restart_mode": "`off`, `auto` (resume when checkpoints exist) or `required`",
    "ckpt_save_best": "keep the best-metric checkpoint of each node",
    "ckpt_save_best_metric": "metric that defines `best` (val_loss)",
    "ckpt_skip_epochs": "write no checkpoint during the first this many epochs",
    "ckpt_save_interval": "write a checkpoint every this many epochs",
    "ckpt_checksum": "store and verify a SHA-256 of every model file",
    "ckpt_keep_mode": "`linear` (keep the newest ckpt_keep_limit) or `exponential`",
    "ckpt_keep_limit": "epoch checkpoints kept per node besides `best` and `last`",
    "ckpt_directory": "checkpoint root; empty = OUT/ckpts",
    "ckpt_enabled": "write per-epoch checkpoints (needed for mid-node restart)",
    "fault_fail_nodes": "testing: nodes that raise an exception when they start",
    "fault_nan_nodes": "testing: nodes whose loss becomes NaN",
    "fault_slow_nodes": "testing: nodes that sleep `fault_slow_seconds` per epoch",
    "fault_slow_seconds": "testing: the sleep per epoch of `fault_slow_nodes`",
    "fault_crash_rank": "testing: this rank dies after `fault_crash_after` finished nodes (-1 = none)",
    "fault_crash_after": "testing: nodes the crashing rank finishes before it dies (rank 0: reports it records; it dies having handed out the next nodes)",
    "fault_crash_kind": "testing: `exit` (os._exit), `signal` (SIGKILL) or `raise` (exception outside a node)",
}

TREE_KEYS = ("expand", "expand_budget", "expand_full_stages", "expand_score", "expand_suspects")
"""Config keys that shape the adaptive tree: a restart must keep them."""
EXPAND_SCORES = ("depth_weighted", "deepest_log_ratio", "mean_log_ratio", "max_log_ratio", "min_log_ratio",
                 "mean_robust_z", "pooled_ratio")
"""``ranking.METHODS`` that need only the per-cell errors (a test keeps the two in step)."""

CHOICES: dict[str, tuple[str, ...]] = {
    "order": ("shuffled", "ordered"),
    "expand": ("full", "adaptive"),
    "expand_score": EXPAND_SCORES,
    "partition": ("cells", "cells+drugs", "drugs"),
    "optimizer": ("adam", "adamw", "sgd"),
    "inherit": ("best", "last"),
    "batch_order": ("node", "family"),
    "device": ("cpu", "cuda", "auto"),
    "ckpt_restart_mode": ("off", "auto", "required"),
    "ckpt_keep_mode": ("linear", "exponential"),
    "ckpt_save_best_metric": ("val_loss", "loss"),
    "fault_crash_kind": ("exit", "signal", "raise"),
}

MINIMUM: dict[str, float] = {
    "momentum": 0.0, "weight_decay": 0.0,
    "n": 2, "s": 1, "epochs": 1, "patience": 1, "batch_size": 1, "group_size": 1,
    "threads": 0, "seed": 0, "min_delta": 0.0, "flush_seconds": 0.0, "progress_every": 0,
    "stall_seconds": 0.0,
    "ckpt_skip_epochs": 0, "ckpt_save_interval": 1, "ckpt_keep_limit": 0,
    "fault_slow_seconds": 0.0, "fault_crash_after": 0, "fault_crash_rank": -1,
    "expand_full_stages": 1, "expand_suspects": 0,
}

MAX_THREADS = 1024
"""Most torch threads per rank: beyond a host's cores threads only contend, and libgomp
dies allocating 1e8 of them (issue 28 item 7) with a message that names no key."""
MAXIMUM: dict[str, float] = {
    # Every numeric key has a ceiling (issue 28 item 6): a value beyond it is a slip (an extra
    # digit, a pasted number) that otherwise overflows int64 tables, allocates without end or
    # waits for ever. Bounds that depend on the data (n <= cells) are checked with the data.
    "seed": 2**64 - 1,  # torch.manual_seed and numpy's generators take 64-bit seeds
    "n": 1_000_000,  # children per node; the data bounds it again by its cells
    "epochs": MAX_EPOCHS, "patience": MAX_EPOCHS, "ckpt_skip_epochs": MAX_EPOCHS, "ckpt_save_interval": MAX_EPOCHS,
    "ckpt_keep_limit": MAX_EPOCHS,
    "batch_size": 2**31 - 1,  # rows of one batch: an int32 index
    "group_size": MAX_THREADS, "threads": MAX_THREADS,
    "min_delta": 1e18,  # a loss beyond the data's value limit (validate.VALUE_LIMIT) squared is inf anyway
    "learning_rate": 1e3, "weight_decay": 1e3, "momentum": 1.0,  # momentum < 1: validate
    "flush_seconds": 86_400.0, "stall_seconds": 30 * 86_400.0, "fault_slow_seconds": 86_400.0,
    "progress_every": 2**31 - 1, "expand_suspects": 2**31 - 1,
    "fault_crash_rank": 2**31 - 1, "fault_crash_after": 2**31 - 1,
}

MODEL_PRESETS = ("small", "paper", "tiny")
"""``uno.PRESETS``' names (a test keeps them in step): ``model`` is one of them or a plug-in."""
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_plugin_model(model: str) -> bool:
    """``model`` names a plug-in (``target:attr``) rather than an Uno preset."""
    return model not in MODEL_PRESETS


def model_identity(model: str) -> str:
    """What names a model across runs: a preset or module spec as written, a model file by its
    base name (its content is compared by hash: the same file through a moved config is
    the same model)."""
    target, _, attr = model.rpartition(":")
    return f"{os.path.basename(target)}:{attr}" if target.endswith(".py") else model


def _check_model(cfg: "RunConfig") -> None:
    """The syntax of ``model`` (its file, module and factory are checked by models/plugin.py
    with the data's widths, still before any rank trains)."""
    if not is_plugin_model(cfg.model):
        if cfg.model_params:
            raise InputError(f"config key 'model_params' is for plug-in models; model {cfg.model!r} is an Uno preset")
        return
    target, sep, attr = cfg.model.rpartition(":")
    dotted = all(_IDENT.fullmatch(part) for part in target.split("."))
    if not sep or not _IDENT.fullmatch(attr) or not (target.endswith(".py") or dotted):
        raise InputError(f"config key 'model' must be one of {', '.join(MODEL_PRESETS)}, 'package.module:build' "
                         f"or 'path/to/file.py:build'; got {cfg.model!r}")
    if cfg.dropout >= 0:
        raise InputError("config key 'dropout' sets the Uno presets' dropout; a plug-in model takes its own "
                         "from [model_params]")


CONFIG_JSON_LIMIT = 32 * 1024
"""Most bytes of the config as JSON: results.h5 keeps it in an attribute of its ``nodes``
table, and HDF5 holds a node's attributes in a 64 KiB header (beside the versions, the
checksum and pandas' own). A larger config (thousands of fault nodes, a pasted string)
ended a finished run with exit 4 and 29 lines of HDF5 errors (issue 28 item 8)."""

_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
_TYPES: dict[str, type] = {
    name: type(getattr(RunConfig(), name)) for name in _FIELDS
}


def suggest(name: str) -> str:
    close = difflib.get_close_matches(name, list(_FIELDS), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(key: str, value: Any) -> Any:
    """Check ``value`` against the declared type of ``key``; ints are accepted as floats."""
    want = _TYPES[key]
    if want is bool:
        if isinstance(value, bool):
            return value
    elif want is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif want is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            v = float(value)
            if not math.isfinite(v):
                raise InputError(f"config key {key!r} must be a finite number, got {value!r}")
            return v
    elif want is str:
        if isinstance(value, str):
            return value
    elif want is dict:
        if isinstance(value, dict):
            return dict(value)
        raise InputError(f"config key {key!r} must be a table ([{key}] or an inline {{...}}), got {value!r}")
    elif want is list:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        if isinstance(value, str):
            return [v for v in value.split(",") if v]
        raise InputError(f"config key {key!r} must be a list of strings, got {value!r}")
    raise InputError(
        f"config key {key!r} must be {want.__name__}, got {type(value).__name__} {value!r}"
    )


def _parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line; the value is read as a TOML value when it parses."""
    if "=" not in text:
        raise InputError(f"--set {text!r}: expected key=value")
    key, _, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    except RecursionError:
        raise InputError(f"--set {text[:40]!r}...: value nested too deeply") from None
    if _TYPES.get(key) is str and not isinstance(value, str):
        value = raw  # a string key takes the text as written: `--set out=2024`, `--set data=true`
    if _TYPES.get(key) is list and not isinstance(value, (list, str)):
        value = raw  # node names: `--set fault_fail_nodes=1.2` is not the float 1.2
    return key, value


def validate(cfg: RunConfig) -> RunConfig:
    """Range and choice checks that need no data; raises InputError."""
    for key, choices in CHOICES.items():
        if getattr(cfg, key) not in choices:
            raise InputError(
                f"config key {key!r} must be one of {', '.join(choices)}; got {getattr(cfg, key)!r}"
            )
    for key, lo in MINIMUM.items():
        if getattr(cfg, key) < lo:
            raise InputError(f"config key {key!r} must be >= {lo:g}; got {getattr(cfg, key)!r}")
    for key, hi in MAXIMUM.items():
        if getattr(cfg, key) > hi:
            raise InputError(f"config key {key!r} must be <= {hi}; got {getattr(cfg, key)!r}")
    if not 0.0 <= cfg.holdout_fraction <= 0.5:
        raise InputError(f"config key 'holdout_fraction' must be in [0, 0.5]; got {cfg.holdout_fraction}")
    if not cfg.learning_rate > 0:
        raise InputError(f"config key 'learning_rate' must be > 0; got {cfg.learning_rate}")
    if not 0.0 < cfg.expand_budget <= 1.0:
        raise InputError(f"config key 'expand_budget' must be in (0, 1]; got {cfg.expand_budget}")
    if cfg.expand_full_stages > cfg.s:
        raise InputError(f"config key 'expand_full_stages' must be <= s ({cfg.s}); got {cfg.expand_full_stages}")
    if cfg.partition == "drugs" and cfg.expand == "adaptive":
        raise InputError("config key 'expand' must be 'full' with partition = 'drugs' (the expansion rule "
                         "scores cells)")
    if cfg.groups and cfg.partition != "cells":
        raise InputError(f"config key 'groups' needs partition = 'cells'; got {cfg.partition!r}")
    if cfg.dropout >= 1.0:
        raise InputError(f"config key 'dropout' must be < 1; got {cfg.dropout}")
    if cfg.momentum >= 1.0:
        raise InputError(f"config key 'momentum' must be < 1; got {cfg.momentum}")
    if cfg.momentum > 0 and cfg.optimizer != "sgd":
        raise InputError(f"config key 'momentum' is sgd's; optimizer {cfg.optimizer!r} has its own (betas)")
    if cfg.optimizer == "sgd" and cfg.group_size > 1 and cfg.device != "cuda":
        raise InputError("optimizer 'sgd' with group_size > 1: a CPU rank group shares the optimizer step "
                         "(sharded), which runs adam and adamw only; use one of them, or group_size = 1")
    _check_model(cfg)
    parse_strategy(cfg.strategy, cfg.epochs)
    size = len(json.dumps(cfg.as_dict(), sort_keys=True, default=str).encode())
    if size > CONFIG_JSON_LIMIT:
        big = max(_FIELDS, key=lambda k: len(json.dumps(getattr(cfg, k), default=str)))
        raise InputError(f"the config is {size:,} bytes as JSON, more than the {CONFIG_JSON_LIMIT:,} that results.h5 "
                         f"can record (largest key: {big!r})")
    if not cfg.data:
        raise InputError("config key 'data' is missing: the path of the input HDF5 file")
    return cfg


def load_config(path: str | None, overrides: list[str] = (), out: str | None = None) -> RunConfig:
    """Read a TOML config (or none), apply ``--set`` overrides and ``--out``, validate."""
    raw: dict[str, Any] = {}
    base = Path(".")
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise InputError(f"config file {path!r} is a directory; give the config file (a .toml file) inside it")
        if not p.exists():
            raise InputError(f"config file {path!r} does not exist")
        if not p.is_file():
            raise InputError(f"config file {path!r} is not a regular file")
        try:
            with open(p, "rb") as f:
                raw = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise InputError(f"config file {path!r} is not valid TOML: {e}") from None
        except RecursionError:  # tomllib recurses per nesting level: [[[[...]]]] of a few thousand
            raise InputError(f"config file {path!r} is not valid TOML: values nested too deeply") from None
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"config file {path!r} cannot be read: {e}") from None
        base = p.parent
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict) and _TYPES.get(key) is not dict:
            raise InputError(f"config section [{key}] is not supported: put keys at the top level")
        if key not in _FIELDS:
            raise InputError(f"unknown config key {key!r}{suggest(key)}")
        values[key] = _coerce(key, value)
    for key in ("data", "cell_metadata"):
        if key in values and values[key] and not os.path.isabs(values[key]):
            values[key] = str(base / values[key])
    model = str(values.get("model", ""))
    if ".py:" in model and not os.path.isabs(model):  # a model file, like data, is relative to the config
        values["model"] = str(base / model)
    for text in overrides:
        key, value = _parse_override(text)
        if key.startswith("model_params."):  # one entry of the table: --set model_params.width=32
            values["model_params"] = {**values.get("model_params", {}), key.partition(".")[2]: value}
            continue
        if key not in _FIELDS:
            raise InputError(f"unknown config key {key!r} in --set{suggest(key)}")
        values[key] = _coerce(key, value)
    if out is not None:
        values["out"] = out
    return validate(RunConfig(**values))


def readme_key_table() -> str:
    """The key table of docs/configuration.md (in the README until issue 27, hence the name),
    generated from the declarations (tests/test_config.py keeps them in sync)."""
    defaults = RunConfig()
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    for name in _FIELDS:
        d = getattr(defaults, name)
        shown = f'"{d}"' if isinstance(d, str) else ("[]" if isinstance(d, list) else str(d).lower() if isinstance(d, bool) else d)
        lines.append(f"| `{name}` | `{shown}` | {DOCS[name]} |")
    return "\n".join(lines)
