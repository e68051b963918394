"""Launch MPI programs from tests, always under a timeout (a deadlock fails, never hangs)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def mpiexec() -> str:
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else (shutil.which("mpiexec") or "mpiexec")


def mpi_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_mpi(n: int, args: list[str], timeout: float = 120, cwd=None) -> subprocess.CompletedProcess:
    """``mpiexec -n n python args...``; raises subprocess.TimeoutExpired on a hang."""
    cmd = [mpiexec(), "-n", str(n), sys.executable, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=mpi_env(), cwd=cwd)


def run_py(args: list[str], timeout: float = 120, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          env=mpi_env(), cwd=cwd)


@dataclass
class TimedRun:
    """A finished launch: exit status, output, and when each output line arrived."""

    returncode: int
    stdout: str
    stderr: str
    lines: list[tuple[float, str, str]]  # (time.time(), "out"|"err", line)
    end: float  # time.time() when mpiexec had exited and no process of the job remained

    def first(self, fragment: str) -> float | None:
        """When the first line containing ``fragment`` arrived (None: never)."""
        return next((t for t, _, line in self.lines if fragment in line), None)

    def line(self, fragment: str) -> str | None:
        """The first output line containing ``fragment`` (None: never)."""
        return next((line for _, _, line in self.lines if fragment in line), None)


def job_pids(marker: str) -> list[int]:
    """Processes whose command line contains ``marker`` (hydra puts every rank in its own
    session, so a process group cannot find them; a unique --out path can)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def run_mpi_timed(n: int, args: list[str], marker: str, timeout: float = 120, cwd=None,
                  mpiexec_args: list[str] = (), lines: list | None = None) -> TimedRun:
    """``mpiexec [mpiexec_args] -n n python args...`` with every output line timestamped.

    ``marker`` is a string unique to this job's command line (its --out path): the run
    ends only when no process carrying it remains, so a rank left behind by the launcher
    counts. On timeout every such process is killed (by pid) and TimeoutExpired raised.
    ``lines``: a list to fill as lines arrive (another thread may wait on an output line).
    """
    cmd = [mpiexec(), *mpiexec_args, "-n", str(n), sys.executable, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=mpi_env(),
                            cwd=cwd)
    lines = [] if lines is None else lines

    def read(stream, name):
        for line in stream:
            lines.append((time.time(), name, line.rstrip("\n")))

    readers = [threading.Thread(target=read, args=(s, k), daemon=True)
               for s, k in ((proc.stdout, "out"), (proc.stderr, "err"))]
    for t in readers:
        t.start()
    deadline = time.monotonic() + timeout
    try:
        proc.wait(timeout=timeout)
        while job_pids(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        if job_pids(marker):
            raise subprocess.TimeoutExpired(cmd, timeout)
    except subprocess.TimeoutExpired:
        for pid in [proc.pid, *job_pids(marker)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        # the hung job's last output, so a hang seen once can be diagnosed
        tail = "".join(f"[{k}] {line}\n" for _, k, line in lines[-60:])
        raise subprocess.TimeoutExpired(cmd, timeout, output=tail) from None
    end = time.time()
    for t in readers:
        t.join(timeout=5)
    return TimedRun(proc.returncode, "".join(f"{line}\n" for _, k, line in lines if k == "out"),
                    "".join(f"{line}\n" for _, k, line in lines if k == "err"), lines, end)
