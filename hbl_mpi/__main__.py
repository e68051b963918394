"""``python -m hbl_mpi <command>``: data, plan, model, run, report.

Each subcommand lives in ``hbl_mpi.commands.<name>`` with ``configure(parser)`` and
``run(args) -> int``; modules are imported only when their command runs, so
``--help`` and ``data inspect`` never pay for torch or MPI start-up.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from hbl_mpi import __version__
from hbl_mpi.core.atomic import WriteFailed
from hbl_mpi.core.errors import EXIT_FATAL, EXIT_INPUT, InputError, error_line, fatal_line

COMMANDS = {
    "data": "build, convert and inspect drug-response HDF5 files (synth, gdsc, inspect)",
    "plan": "build the sublearning plan for a data file and print its shape",
    "model": "print the Uno model's layer table and parameter count",
    "run": "train the whole node tree (under mpiexec; --serial for one process)",
    "report": "analyse results.h5 files: the paper's figures, the cell ranking, detection scores",
    "curate": "write the data without the most harmful cells (or with only the most beneficial)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hbl_mpi",
        description="High-bypass learning: a tree of drug-response models trained over MPI.",
    )
    parser.add_argument("--version", action="version", version=f"hbl_mpi {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(f"hbl_mpi.commands.{name}")
        module.configure(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except InputError as e:
        print(error_line(str(e)), file=sys.stderr)
        return EXIT_INPUT
    except WriteFailed as e:  # the file it names was left as it was (atomic.py)
        print(fatal_line(f"{e.strerror}; the previous file (if any) is unchanged: "
                         "free space and run the command again"), file=sys.stderr)
        return EXIT_FATAL
    except KeyboardInterrupt:
        if _world_rank() == 0:  # under MPI every rank gets the SIGINT: one line for the job
            print("hbl_mpi: interrupted", file=sys.stderr)
        return 130


def _world_rank() -> int:
    """This process's MPI rank when MPI is initialised, else 0 (no import of mpi4py here)."""
    mpi = sys.modules.get("mpi4py.MPI")
    try:
        return mpi.COMM_WORLD.Get_rank() if mpi is not None and mpi.Is_initialized() else 0
    except Exception:
        return 0


if __name__ == "__main__":
    sys.exit(main())
