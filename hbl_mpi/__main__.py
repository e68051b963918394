"""``python -m hbl_mpi <command>``: data, plan, model, run, report.

Each subcommand lives in ``hbl_mpi.commands.<name>`` with ``configure(parser)`` and
``run(args) -> int``; modules are imported only when their command runs, so
``--help`` and ``data inspect`` never pay for torch or MPI start-up.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from hbl_mpi import __version__
from hbl_mpi.core import interrupt
from hbl_mpi.core.atomic import WriteFailed
from hbl_mpi.core.errors import EXIT_FATAL, EXIT_INPUT, InputError, error_line, fatal_line

_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
"""Why a write fails when the output path is wrong (read-only folder or file system): exit 2."""

COMMANDS = {
    "data": "build, convert and inspect drug-response HDF5 files (synth, gdsc, inspect)",
    "plan": "build the sublearning plan for a data file and print its shape",
    "model": "print the Uno model's layer table and parameter count",
    "run": "train the whole node tree (under mpiexec; --serial for one process)",
    "report": "analyse results.h5 files: the paper's figures, the cell ranking, detection scores",
    "curate": "write the data without the most harmful cells (or with only the most beneficial)",
}


class Parser(argparse.ArgumentParser):
    """argparse with the package's error line: ``hbl_mpi: error: <message>``, exit 2.

    argparse prints the usage and then ``python -m hbl_mpi run: error: ...`` (several lines,
    another prefix); every other bad input is one line starting ``hbl_mpi: error:``, which
    scripts grep for. Subparsers are built from the parent's class, so this one override
    covers every command and action (issue 28 item 8). ``--help`` still prints the usage.
    """

    def error(self, message: str):
        command = " ".join(self.prog.split()[3:])  # "python -m hbl_mpi data synth" -> "data synth"
        where = f" {command}:" if command else ""
        self.exit(EXIT_INPUT, error_line(f"{where.strip()} {' '.join(message.split())} (see --help)".strip()) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
    previous = interrupt.install()  # SIGTERM (a batch system's time limit) stops as Ctrl-C does
    try:
        return int(args._module.run(args) or 0)
    except InputError as e:
        print(error_line(str(e)), file=sys.stderr)
        return EXIT_INPUT
    except WriteFailed as e:  # the file it names was left as it was (atomic.py)
        if not e.disk_full and getattr(e.cause, "errno", None) in _UNWRITABLE:  # the user's path, not the disk
            print(error_line(f"cannot write {e.path!r}: {e.cause.strerror}; choose a writable output path"),
                  file=sys.stderr)
            return EXIT_INPUT
        print(fatal_line(f"{e.strerror}; the previous file (if any) is unchanged: "
                         "free space and run the command again"), file=sys.stderr)
        return EXIT_FATAL
    except KeyboardInterrupt as e:  # SIGINT, or SIGTERM (interrupt.Terminated)
        if _world_rank() == 0:  # under MPI every rank gets the signal: one line for the job
            print(f"hbl_mpi: {interrupt.what(e)}", file=sys.stderr)
        return interrupt.exit_code(e)
    finally:
        # in-process callers (tests) get their handler back; the command line's process only
        # exits now (MPI_Finalize): a SIGTERM there would end it with a bare status 15
        interrupt.restore(previous if argv is not None else interrupt.IGNORE)


def _world_rank() -> int:
    """This process's MPI rank when MPI is initialised, else 0 (no import of mpi4py here)."""
    mpi = sys.modules.get("mpi4py.MPI")
    try:
        return mpi.COMM_WORLD.Get_rank() if mpi is not None and mpi.Is_initialized() else 0
    except Exception:
        return 0


if __name__ == "__main__":
    sys.exit(main())
