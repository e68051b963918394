"""Whether the MPI library takes CUDA device pointers (then GPU states and gradients go
directly; otherwise they are staged through pinned host memory, which is always correct)."""

from __future__ import annotations

import ctypes
import functools
import os


def _loaded_mpi_libraries() -> list[str]:
    """Paths of the MPI libraries mapped into this process (mpi4py loads libmpi privately,
    so its symbols are not in the global namespace that ``ctypes.CDLL(None)`` sees)."""
    paths = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rsplit(None, 1)[-1]
                name = os.path.basename(path)
                if name.startswith(("libmpi.", "libmpi_", "libmpich")) and path not in paths:
                    paths.append(path)
    except OSError:
        pass
    return paths


def cuda_aware() -> bool:
    """Whether the MPI library takes CUDA device pointers.

    ``HBL_CUDA_AWARE=0|1`` overrides; otherwise ask ``MPIX_Query_cuda_support`` (Open MPI
    and MPICH both export it) in the libmpi this process loaded. False when unknown:
    staging through pinned host memory is always correct.
    """
    env = os.environ.get("HBL_CUDA_AWARE")
    if env is not None:
        return env.strip() not in ("", "0", "false", "no")
    return _library_cuda_support()


@functools.lru_cache(maxsize=1)
def _library_cuda_support() -> bool:
    """The loaded libmpi's answer, asked once per process (it cannot change)."""
    for path in _loaded_mpi_libraries():
        try:
            lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL)
            fn = lib.MPIX_Query_cuda_support
        except (AttributeError, OSError):
            continue
        fn.restype = ctypes.c_int
        return bool(fn())
    return False
