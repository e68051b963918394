"""A worker stopped with SIGSTOP ends the job (issue 19 item 7): exit 4 and a line naming
the rank, the node and the silence, instead of a job that waits for as long as it stays
stopped. Under mpiexec and a timeout (a hang fails the test)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from faultutil import TINY_TREE, all_nodes_slow
from mpiutil import job_pids, run_mpi_timed

CONFIG = TINY_TREE + "stall_seconds = 8.0\n" + all_nodes_slow(1.0)


def rank_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
    except OSError:
        return None
    value = env.get(b"PMI_RANK") or env.get(b"OMPI_COMM_WORLD_RANK")
    return int(value) if value is not None else None


@pytest.mark.timeout(300)
def test_sigstopped_worker_ends_the_job_with_exit_4(tmp_path):
    from hbl_mpi.data import synthesize, write_uno

    ds = synthesize("small", seed=4, cells=8, drugs=5, cell_features=4, descriptors=3, fingerprints=0,
                    anomaly_fraction=0.0)
    write_uno(ds, str(tmp_path / "d.h5"), seed=1)
    (tmp_path / "run.toml").write_text(CONFIG)
    marker = str(tmp_path / "stall_out")
    result, stopped = {}, {}

    lines: list = []

    def launch():
        result["run"] = run_mpi_timed(3, ["-m", "hbl_mpi", "run", "run.toml", "--out", marker], marker,
                                      timeout=240, cwd=tmp_path, lines=lines)

    def both_workers_in_a_node() -> bool:  # the event: two stage-1 nodes are sleeping (fault_slow_nodes)
        return len({line.split(" epoch")[0] for _, _, line in list(lines) if "fault_slow_nodes: node" in line}) >= 2

    thread = threading.Thread(target=launch)
    thread.start()
    try:
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline and thread.is_alive():
            if both_workers_in_a_node():  # so rank 1 is inside its first (slow) node
                workers = [p for p in job_pids(marker) if rank_of(p) == 1]
                if workers:
                    os.kill(workers[0], signal.SIGSTOP)
                    stopped["at"] = time.time()
                    stopped["pid"] = workers[0]
                    break
            time.sleep(0.1)
        thread.join(260)
    finally:
        if "pid" in stopped:
            try:
                os.kill(stopped["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert "at" in stopped, "the run never started"
    run = result["run"]
    line = run.line("has neither reported nor answered")
    assert run.returncode == 4, run.stderr[-3000:]
    assert line is not None and "rank 1 " in line and "while training node 1." in line, run.stderr[-3000:]
    assert "its process is stopped" in line and "limit 8 s" in line, line
    seconds = run.end - stopped["at"]
    assert seconds < 8 + 30, f"the stall took {seconds:.1f} s to end the job"
    print(f"\n[time-to-exit] SIGSTOP of rank 1 (stall_seconds = 8): exit {run.returncode} after {seconds:.1f} s")
