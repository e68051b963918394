"""Helpers the shipped plug-in models share: preset + override parameters, group lookup, MLPs."""

from __future__ import annotations

from torch import nn


def settings(params: dict, presets: dict[str, dict], default: str) -> dict:
    """``params['preset']``'s values (``default`` when absent), overridden by the other entries;
    ValueError naming an unknown key or preset (the loader turns it into one exit-2 line)."""
    params = dict(params)
    name = params.pop("preset", default)
    if name not in presets:
        raise ValueError(f"preset {name!r}: choose from {', '.join(presets)}")
    base = dict(presets[name])
    unknown = sorted(set(params) - set(base))
    if unknown:
        raise ValueError(f"unknown model_params {unknown}; known: preset, {', '.join(sorted(base))}")
    base.update(params)
    return base


def group_position(inputs, name: str | None, prefix: str) -> int:
    """Index of the feature group ``name`` (or the first whose name starts with ``prefix``)."""
    names = [g for g, _ in inputs.groups]
    if name is not None:
        if name not in names:
            raise ValueError(f"no feature group {name!r} in the data (groups: {', '.join(names)})")
        return names.index(name)
    for i, g in enumerate(names):
        if g.startswith(prefix):
            return i
    raise ValueError(f"no feature group starting with {prefix!r} in the data (groups: {', '.join(names)})")


def mlp(width_in: int, widths, dropout: float) -> tuple[nn.Sequential, int]:
    """Linear + ReLU (+ dropout) layers; returns the stack and its output width."""
    layers: list[nn.Module] = []
    w = width_in
    for out in widths:
        layers += [nn.Linear(w, int(out)), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(float(dropout)))
        w = int(out)
    return nn.Sequential(*layers), w
