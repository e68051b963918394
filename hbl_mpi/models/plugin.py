"""Plug-in models: any torch network behind one small contract (docs/models.md).

``model`` in the config is an Uno preset (``small``, ``paper``, ``tiny``: ``hbl_mpi/uno.py``)
or names a factory, ``package.module:build`` or ``path/to/file.py:build``::

    def build(inputs, params) -> torch.nn.Module
        # inputs.groups: tuple of (name, width), one per feature group, in data order
        # inputs.has_dose: whether a dose column follows the groups
        # params: the config's [model_params] table (a dict)

    module.forward(*group_tensors[, dose]) -> predictions of shape (B,)

Why this shape: ``TrainState`` keeps every parameter as a view into one flat float32
buffer (the unit that forks, checkpoints and is summed over a rank group), so a module
may hold anything as architecture but its trained values must be float32 parameters;
buffers are not in that buffer, so they must be constants of (inputs, params) that
training never writes. ``check_model`` proves what it can of that on a probe batch,
before any rank trains (``InputError``: one line, exit 2).

The run fingerprint includes the factory's source-file hash (``ModelSource.source_hash``)
and ``model_params``, so ``--restart`` with a changed model file is refused.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from hbl_mpi.core.config import is_plugin_model
from hbl_mpi.core.errors import InputError
from hbl_mpi.train.flat_state import ModelState, TrainState
from hbl_mpi.train.optim import OptimizerSpec
from hbl_mpi.uno import InputSpec, build_model

PROBE_ROWS = 3
"""Rows of the probe batch ``check_model`` runs (B = 3: a (B, 1) output cannot pass as (B,))."""


def file_hash(path: str) -> str:
    """SHA-256 (16 hex digits) of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


@dataclass(frozen=True)
class ModelSource:
    """A resolved ``model``: how to build the module for a data set, and what names it."""

    spec: str  # the config's `model` (a file spec resolved against the config's directory)
    name: str  # what results and the report show: the preset, `module:attr` or `file.py:attr`
    source_file: str  # the file the factory (or Uno) is defined in
    source_hash: str  # file_hash(source_file)
    params: dict = field(default_factory=dict)
    dropout: float | None = None  # Uno presets only
    factory: Callable | None = field(default=None, compare=False, repr=False)  # None: an Uno preset

    @property
    def is_preset(self) -> bool:
        return self.factory is None

    @property
    def fingerprint_hash(self) -> str:
        """What the run fingerprint adds: the plug-in's source hash ("" for an Uno preset, whose
        fingerprint stays what it was before plug-ins existed)."""
        return "" if self.is_preset else self.source_hash

    def build(self, inputs: InputSpec) -> nn.Module:
        """The module for ``inputs``, under whatever RNG state the caller set."""
        if self.is_preset:
            return build_model(inputs, self.spec, self.dropout)
        try:
            module = self.factory(inputs, dict(self.params))
        except Exception as e:
            raise InputError(f"model {self.name}: build(inputs, params) raised {type(e).__name__}: "
                             f"{_one_line(e)}") from None
        if not isinstance(module, nn.Module):
            raise InputError(f"model {self.name}: build(inputs, params) returned {type(module).__name__}, "
                             "not a torch.nn.Module")
        return module


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


def resolve(model: str, params: dict | None = None, dropout: float | None = None) -> ModelSource:
    """The ``ModelSource`` a config's ``model`` names; InputError for a missing file, module
    or attribute (nothing is built yet)."""
    params = dict(params or {})
    if not is_plugin_model(model):
        import hbl_mpi.uno as uno

        return ModelSource(model, model, uno.__file__, file_hash(uno.__file__), params, dropout)
    target, _, attr = model.rpartition(":")
    if target.endswith(".py"):
        module, where = _load_file(target), os.path.basename(target)
    else:
        module, where = _load_module(target), target
    name = f"{where}:{attr}"
    factory = getattr(module, attr, None)
    if factory is None:
        raise InputError(f"model {model!r}: {where} has no attribute {attr!r}")
    if not callable(factory):
        raise InputError(f"model {model!r}: {attr!r} is a {type(factory).__name__}, not a callable build(inputs, params)")
    source = getattr(module, "__file__", None)
    if not source or not os.path.isfile(source):
        raise InputError(f"model {model!r}: its module has no source file to fingerprint")
    return ModelSource(model, name, source, file_hash(source), params, None, factory)


def source_for(cfg) -> ModelSource:
    """The ``ModelSource`` of a RunConfig."""
    return resolve(cfg.model, cfg.model_params, cfg.resolved_dropout())


def _load_file(path: str):
    if not os.path.isfile(path):
        raise InputError(f"model file {path!r} does not exist")
    # one module per file content: a changed file is a new module, never a stale one
    name = f"hbl_mpi_user_model_{file_hash(path)}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"model file {path!r} cannot be loaded as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise InputError(f"model file {path!r} cannot be imported: {type(e).__name__}: {_one_line(e)}") from None
    return module


def _load_module(target: str):
    try:
        return importlib.import_module(target)
    except Exception as e:
        raise InputError(f"model module {target!r} cannot be imported: {type(e).__name__}: {_one_line(e)}") from None


def _probe_batch(inputs: InputSpec) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(PROBE_ROWS, int(w), generator=g) for _, w in inputs.groups]
    if inputs.has_dose:
        xs.append(torch.randn(PROBE_ROWS, generator=g))
    return xs


def _seeded(source: ModelSource, inputs: InputSpec, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return source.build(inputs)


def check_model(source: ModelSource, inputs: InputSpec) -> int:
    """Everything the engine needs of a module, checked before any rank trains; returns the
    parameter count. InputError (one line) for the first problem found:

    * ``build`` raises or returns no module;
    * no parameters, a parameter that is not float32 or does not require a gradient (the
      flat state holds float32 trained values only: freeze a tensor as a buffer instead);
    * a buffer that differs between two builds under different seeds (every rank builds
      its own module: buffers must be constants of inputs and params);
    * a buffer that a training-mode forward and backward changes (BatchNorm's running
      statistics): buffers are not forked, checkpointed or summed over a group;
    * a forward that raises, or an output that is not a floating (B,) tensor, in train
      or eval mode.
    """
    module = _seeded(source, inputs, 0)
    params = list(module.named_parameters())
    if not params:
        raise InputError(f"model {source.name}: the module has no parameters to train")
    for pname, p in params:
        if p.dtype != torch.float32:
            raise InputError(f"model {source.name}: parameter {pname!r} is {p.dtype}; the engine's flat state "
                             "holds float32 parameters only")
        if not p.requires_grad:
            raise InputError(f"model {source.name}: parameter {pname!r} does not require a gradient; hold a "
                             "frozen tensor as a buffer (register_buffer)")
    buffers = {b: t.detach().clone() for b, t in module.named_buffers()}
    if buffers:
        other = dict(_seeded(source, inputs, 1).named_buffers())
        for bname, t in buffers.items():
            if bname not in other or not torch.equal(other[bname], t):
                raise InputError(f"model {source.name}: buffer {bname!r} depends on the random seed; every rank "
                                 "builds its own module, so buffers must be constants of inputs and params")
    xs = _probe_batch(inputs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module.train()
        out = _forward(source, module, xs, "train")
        out.float().sum().backward()
        for bname, t in module.named_buffers():
            if bname not in buffers or not torch.equal(buffers[bname], t.detach()):
                raise InputError(f"model {source.name}: buffer {bname!r} changed in a training step (running "
                                 "statistics?); buffers are not forked with the weights: use parameters, or "
                                 "a norm without running statistics (LayerNorm, GroupNorm)")
        module.eval()
        with torch.no_grad():
            _forward(source, module, xs, "eval")
    return sum(p.numel() for _, p in params)


def _forward(source: ModelSource, module: nn.Module, xs: list[torch.Tensor], mode: str) -> torch.Tensor:
    try:
        out = module(*xs)
    except Exception as e:
        raise InputError(f"model {source.name}: forward on a probe batch ({mode} mode, {len(xs)} tensors of "
                         f"{PROBE_ROWS} rows) raised {type(e).__name__}: {_one_line(e)}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (PROBE_ROWS,) or not out.is_floating_point():
        got = f"{tuple(out.shape)} {out.dtype}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"model {source.name}: forward returned {got} on a batch of {PROBE_ROWS} rows "
                         f"({mode} mode); the contract is a floating tensor of shape (B,) = ({PROBE_ROWS},)")
    return out


def initial_state(source: ModelSource, inputs: InputSpec, seed: int, learning_rate: float,
                  optimizer: OptimizerSpec | None = None) -> ModelState:
    """The fresh initialisation every stage-1 node starts from, a pure function of ``seed``
    (built on the CPU under a private RNG: every rank gets the same bytes)."""
    return TrainState(_seeded(source, inputs, seed), learning_rate, "cpu", optimizer).snapshot()


def n_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
