"""SIGTERM (issue 28 item 2): what LSF, Slurm and PBS send at the wall-clock limit.

``kill -TERM <mpiexec>`` must keep every node finished so far: hydra forwards the signal
to every rank, rank 0 flushes results.h5 and ends the job with exit 143 and one line, and
``--restart`` continues to the uninterrupted run's node table (val_loss equal: on CPU a
restarted tree is bit-exact). The default tier sends it once, after a progress line said
k nodes were done; the soak (``-m slow``) sends it at random times in 10 runs.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest

from faultutil import NODES, check_complete, check_intact, run_cmd, sets, write_config
from mpiutil import job_pids, mpi_env, mpiexec, run_mpi, run_py

SLOW = {"fault_slow_nodes": NODES, "fault_slow_seconds": 0.6}
"""Every node sleeps 0.6 s per epoch (it does not change what is learned): room to signal."""
DONE = re.compile(r"\[hbl_mpi\] (\d+)/\d+ done")


def launch(cfg, out, *extra, launcher=None):
    """``mpiexec -n 3 ... run`` (``launcher=[]``: one process) in the background; lines are
    collected as they arrive."""
    prefix = [mpiexec(), "-n", "3"] if launcher is None else launcher
    cmd = [*prefix, sys.executable, *run_cmd(cfg, out, "--set", "progress_every=1", *extra)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=mpi_env())
    lines: list[str] = []
    readers = [threading.Thread(target=lambda s=s: lines.extend(line.rstrip("\n") for line in s), daemon=True)
               for s in (proc.stdout, proc.stderr)]
    for t in readers:
        t.start()
    return proc, lines, readers


def reported_done(lines: list[str]) -> int:
    """The largest ``k/N done`` a progress line has said so far."""
    return max([int(m.group(1)) for line in list(lines) if (m := DONE.search(line))] or [0])


def finish(proc, readers, out, timeout: float = 90) -> None:
    try:
        proc.wait(timeout=timeout)
    finally:
        for pid in ([proc.pid] if proc.poll() is None else []) + job_pids(str(out)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    for t in readers:
        t.join(timeout=5)


def node_table(out) -> pd.DataFrame:
    nodes = pd.read_hdf(os.path.join(out, "results.h5"), "nodes").set_index("node").sort_index()
    return nodes[["status", "val_loss", "epochs_run"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The config, and the uninterrupted run's node table (serial: bit-exact with MPI on CPU)."""
    root = tmp_path_factory.mktemp("sigterm")
    cfg = write_config(root)
    proc = run_py(run_cmd(cfg, root / "ref", "--serial"), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cfg, node_table(root / "ref")


def sigterm_then_restart(cfg, out, ref: pd.DataFrame, *, after_done: int = 0,
                         delay_s: float = 0.0) -> tuple[int, int]:
    """Launch, SIGTERM mpiexec ``delay_s`` after a progress line said ``after_done`` nodes
    were done (0: after the launch), check what was kept, ``--restart`` to the end and
    compare with ``ref``. Returns (exit status of the terminated launch, nodes reported
    done when the signal was sent)."""
    proc, lines, readers = launch(cfg, out, *sets(**SLOW))
    deadline = time.monotonic() + 90
    while proc.poll() is None and time.monotonic() < deadline and reported_done(lines) < after_done:
        time.sleep(0.02)
    end = time.monotonic() + delay_s
    while proc.poll() is None and time.monotonic() < end:
        time.sleep(0.02)
    k = reported_done(lines)
    sent = proc.poll() is None
    if sent:
        os.kill(proc.pid, signal.SIGTERM)
    finish(proc, readers, out)
    context = "\n".join(lines[-40:])
    if sent and proc.returncode != 0:  # 0: it had finished before the signal landed
        assert proc.returncode == 143, context
        ours = [line for line in lines if line.startswith("hbl_mpi: ")]
        assert len(ours) == 1 and "terminated (SIGTERM)" in ours[0], context
        assert "Traceback" not in context, context
    if os.path.exists(out / "results.h5"):
        kept = check_intact(out)
        assert (kept["status"] == "done").sum() >= k, f"progress said {k} done:\n{context}"
    again = run_mpi(3, run_cmd(cfg, out, "--restart"), timeout=120)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    check_complete(out)
    got = node_table(out)
    pd.testing.assert_frame_equal(got, ref, check_exact=True)
    return proc.returncode, k


@pytest.mark.timeout(300)
def test_sigterm_keeps_reported_nodes_and_restart_finishes(reference, tmp_path):
    cfg, ref = reference
    code, k = sigterm_then_restart(cfg, tmp_path / "out", ref, after_done=2)
    assert code == 143 and k >= 2


@pytest.mark.timeout(200)
def test_sigterm_serial_flushes_and_restart_finishes(reference, tmp_path):
    """``run --serial`` (one process, no launcher): the same flush, line and exit status."""
    cfg, ref = reference
    out = tmp_path / "out"
    proc, lines, readers = launch(cfg, out, "--serial", "--set", "flush_seconds=60", *sets(**SLOW), launcher=[])
    deadline = time.monotonic() + 120
    while proc.poll() is None and reported_done(lines) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    k = reported_done(lines)
    proc.send_signal(signal.SIGTERM)
    finish(proc, readers, out)
    context = "\n".join(lines[-30:])
    assert proc.returncode == 143 and k >= 2, context
    ours = [line for line in lines if line.startswith("hbl_mpi: ")]
    assert len(ours) == 1 and ours[0].startswith("hbl_mpi: terminated (SIGTERM): "), context
    # flush_seconds = 60: without the flush on SIGTERM the file would hold no node at all
    assert (check_intact(out)["status"] == "done").sum() >= k, context
    again = run_py(run_cmd(cfg, out, "--restart", "--serial"), timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    pd.testing.assert_frame_equal(node_table(out), ref, check_exact=True)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_sigterm_soak_random_times(reference, tmp_path):
    """10 runs, each sent SIGTERM at a random moment, each continued by --restart to the
    uninterrupted table. A moment is a random time after the launch (start-up: imports,
    data, the lock) or after the k-th finished node (k = 1..5: mid-node, mid-flush, between
    nodes). ``HBL_SIGTERM_SEED`` draws other moments."""
    cfg, ref = reference
    rng = random.Random(int(os.environ.get("HBL_SIGTERM_SEED", "28")))
    log = []
    for i in range(10):
        k = rng.randint(0, 5)
        delay = rng.uniform(0.0, 8.0) if k == 0 else rng.uniform(0.0, 1.5)
        code, seen = sigterm_then_restart(cfg, tmp_path / f"out{i}", ref, after_done=k, delay_s=delay)
        log.append(f"run {i}: SIGTERM {delay:.1f} s after {'launch' if k == 0 else f'{k} done'}, "
                   f"{seen} reported done, exit {code}")
    print("\n".join(log))
