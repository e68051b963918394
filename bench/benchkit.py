"""What every bench script shares so that it runs with no arguments on a fresh clone.

A benchmark run with no arguments either makes what it needs or says, in one line that
starts with the script's name, what to run first (exit 2, the house rule for bad input);
never a traceback. This module holds the pieces the scripts would otherwise each copy:

* ``default_work(script)``: the scratch folder a script uses when ``--work`` is not given,
  ``<system temp dir>/hbl_<script>`` (``tempfile.gettempdir()``, so ``TMPDIR`` moves it);
* ``ensure_data(path, script)``: a synthetic Uno HDF5 file made in process
  (``hbl_mpi.data.synthesize`` + ``write_uno``, the code behind ``data synth``) when it is
  missing, with one line saying so; ``DEMO_DATA`` is the README's ``demo/small.h5``, made
  exactly as the README's first command makes it (preset small, seed 1);
* ``need_first(script, text)``: the one-line "what to run first" exit;
* ``mpiexec_self(script_file, ranks)``: a script that must run under MPI, started as plain
  ``python bench/x.py``, starts itself again under ``mpiexec -n RANKS`` (the command its
  docstring gives) instead of failing on one rank.

Importing this module puts the checkout's root first on ``sys.path``, so the scripts use
the ``hbl_mpi`` beside them.
"""

from __future__ import annotations

import os
import sys
import time
from typing import NoReturn

# tempfile and shutil are imported where used: bench/file_workflow.py's node processes import
# this module, and their start-up time is one of the phases that bench measures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

#: the README demo's data file and how the README makes it (``data synth --preset small --seed 1``)
DEMO_DATA = os.path.join(ROOT, "demo", "small.h5")
DEMO_PRESET, DEMO_SEED = "small", 1

#: environment variables a launcher (MPICH's hydra, Open MPI, PMIx) sets in every rank
_LAUNCHER_ENV = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")


def script_name(script_file: str) -> str:
    """``bench/x.py`` -> ``x.py``: how every line a script writes about itself starts."""
    return os.path.basename(script_file)


def say(script_file: str, text: str) -> None:
    """One line on stdout, prefixed with the script's name (flushed: subprocesses follow)."""
    print(f"{script_name(script_file)}: {text}", flush=True)


def need_first(script_file: str, text: str) -> NoReturn:
    """The script cannot run yet: one line on stderr naming what to run first, exit 2."""
    print(f"{script_name(script_file)}: {text}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def default_work(script: str) -> str:
    """The scratch folder of ``bench/<script>.py`` when no ``--work`` is given."""
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"hbl_{script}")


def ensure_data(path: str, script_file: str, *, preset: str = DEMO_PRESET, seed: int = DEMO_SEED,
                **overrides) -> str:
    """``path`` if it exists; otherwise make it (synthetic ``preset``/``seed``/``overrides``).

    Written by ``write_uno`` (to a temporary file renamed into place: an interrupted run
    leaves no half file), split seed = ``seed`` as ``data synth`` does. One line says
    that the file was missing and is being made, and one how long it took.
    """
    path = os.path.abspath(path)
    if os.path.exists(path):
        return path
    from hbl_mpi.data import synthesize, write_uno

    extra = "".join(f", {k}={v}" for k, v in overrides.items())
    say(script_file, f"{path} is missing: making it (synthetic preset {preset}, seed {seed}{extra})")
    t0 = time.perf_counter()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_uno(synthesize(preset, seed=seed, **overrides), path, seed=seed)
    say(script_file, f"made {path} in {time.perf_counter() - t0:.1f} s")
    return path


def ensure_demo_data(path: str, script_file: str) -> str:
    """A script's data file: the README demo's is made when missing; any other must exist."""
    if os.path.abspath(path) == DEMO_DATA:
        return ensure_data(DEMO_DATA, script_file)
    if not os.path.exists(path):
        need_first(script_file, f"data file {path} does not exist (leave the data setting out to use "
                                f"demo/small.h5, made when missing, or make one with `python -m hbl_mpi data "
                                f"synth --out {path}`)")
    return path


def under_mpiexec() -> bool:
    """Whether a launcher started this process (as one rank of a job)."""
    return any(k in os.environ for k in _LAUNCHER_ENV)


def mpiexec_path() -> str | None:
    """The venv's ``mpiexec`` (pip's mpich puts it beside python), else the one on PATH."""
    import shutil

    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else shutil.which("mpiexec")


def mpiexec_self(script_file: str, ranks: int, argv: list[str] | None = None) -> None:
    """Run this script as ``mpiexec -n RANKS python SCRIPT ARGV`` unless a launcher started it.

    Returns only when already under a launcher; otherwise replaces this process (the job's
    output, its JSON line last, is then this command's output and its exit code).
    """
    if under_mpiexec():
        return
    argv = sys.argv[1:] if argv is None else argv
    exe = mpiexec_path()
    if exe is None:
        need_first(script_file, f"needs mpiexec (pip install -e '.[mpich]'); then run `mpiexec -n {ranks} "
                                f"python bench/{script_name(script_file)}`")
    cmd = [exe, "-n", str(ranks), sys.executable, os.path.abspath(script_file), *argv]
    say(script_file, f"not started by mpiexec: running `mpiexec -n {ranks} python bench/"
                     f"{script_name(script_file)}{''.join(' ' + a for a in argv)}`")
    os.execv(exe, cmd)
