"""Failures under mpiexec, injected with the ``fault_*`` config keys (faults.py).

Contained: a node that raises or whose loss turns NaN is recorded failed with its message,
its descendants skipped, the run completes with exit status 3 (partial), the results file
reads with pandas, ``report`` lists the failed nodes, and a ``--restart`` (faults off)
trains them.

Fatal: a worker that dies (os._exit, SIGKILL, an exception outside node work) or a dying
rank 0 ends every rank within 30 s of the crash (measured from the crash's own stderr
line to the moment no process of the job remains), stderr names the rank and the cause,
the results file is intact (every node it calls done really is) and ``run --restart``
with the same --out completes the tree with every plan node exactly once.

Launchers that do not end the job when one rank exits (hydra ``-disable-auto-cleanup``,
srun without ``--kill-on-bad-exit``): the ranks' own pid watch (liveness.py) ends it.
Hydra still tears a job down on a *signal* even then, so these cases use an exit.

Every launch has a timeout (a hang fails the test) and the time-to-exit of each crash is
printed (``pytest -s``) for the issue's closing note.
"""

from __future__ import annotations

import pytest

from faultutil import EXIT_LIMIT_S, NODES, check_complete, check_intact, crash_seconds, run_cmd, sets, write_config
from mpiutil import run_mpi, run_mpi_timed, run_py


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return write_config(tmp_path_factory.mktemp("faults"))


# ----------------------------------------------------------------------------- contained


@pytest.mark.timeout(150)
@pytest.mark.parametrize("launcher", ["mpiexec", "serial"])
def test_node_failures_are_contained(cfg, tmp_path, launcher):
    out = tmp_path / "out"
    faults = sets(fault_fail_nodes=["1.1"], fault_nan_nodes=["1.2.2"])
    if launcher == "serial":
        proc = run_py(run_cmd(cfg, out, "--serial", *faults), timeout=100)
    else:
        proc = run_mpi(3, run_cmd(cfg, out, *faults), timeout=100)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-3000:]  # errors.EXIT_PARTIAL
    assert "Traceback" not in proc.stderr
    assert "finished: 2 done, 2 failed, 2 skipped" in proc.stdout
    nodes = check_intact(out)
    assert sorted(nodes.index) == sorted(NODES)
    status = nodes["status"].to_dict()
    assert status == {"1.1": "failed", "1.1.1": "skipped", "1.1.2": "skipped", "1.2": "done",
                      "1.2.1": "done", "1.2.2": "failed"}
    assert "injected failure (fault_fail_nodes) in node 1.1" in nodes.loc["1.1", "error"]
    assert "NonFiniteLoss" in nodes.loc["1.2.2", "error"] and "nan" in nodes.loc["1.2.2", "error"]
    assert nodes.loc["1.1.1", "error"] == "ancestor 1.1 failed"

    if launcher == "serial":  # a restart without the faults trains what failed or was skipped
        again = run_py(run_cmd(cfg, out, "--serial", "--restart"), timeout=100)
        assert again.returncode == 0, again.stderr[-3000:]
        check_complete(out)
        return
    report = tmp_path / "report"  # (once: the serial and MPI results files are alike)
    rep = run_py(["-m", "hbl_mpi", "report", str(out / "results.h5"), "--out", str(report)], timeout=100)
    assert rep.returncode == 0, rep.stderr[-3000:]
    md = (report / "report.md").read_text()
    assert "Failed nodes" in md
    for node in ("1.1", "1.2.2"):
        row = next(line for line in md.splitlines() if line.startswith(f"| {node} |"))
        assert "failed" in row and nodes.loc[node, "error"].split(":")[0] in row
    assert "1.1.1" in md and "skipped" in md


# ----------------------------------------------------------------------------- fatal

FATAL = {
    # name: (crashing rank, kind, nodes (worker) or reports (rank 0) before the crash, restart ranks)
    "worker exit": (1, "exit", 1, 0),
    "worker signal": (1, "signal", 1, 3),
    "worker raise": (1, "raise", 1, 0),
    "rank 0 exit": (0, "exit", 2, 0),
    "rank 0 signal": (0, "signal", 2, 0),
    "rank 0 raise": (0, "raise", 2, 3),
}


def crash_and_restart(cfg, out, rank, kind, after, restart_ranks, mpiexec_args=(), extra=()):
    """Crash the job, check what issue 7 promises, restart it; returns (run, seconds to exit)."""
    faults = sets(fault_crash_rank=rank, fault_crash_kind=kind, fault_crash_after=after) + list(extra)
    run = run_mpi_timed(3, run_cmd(cfg, out, *faults), marker=str(out), timeout=120,
                        mpiexec_args=list(mpiexec_args))
    seconds = crash_seconds(run, rank, kind)
    assert seconds is not None, run.stdout[-2000:] + run.stderr[-3000:]
    print(f"\n[time-to-exit] rank {rank} {kind} {' '.join(mpiexec_args)}: {seconds:.2f} s, "
          f"exit status {run.returncode}")
    assert seconds < EXIT_LIMIT_S, f"the job took {seconds:.1f} s to end after the crash"
    assert run.returncode not in (0, 2, 3), run.returncode
    check_intact(out)
    restart = run_cmd(cfg, out, "--restart")
    again = run_mpi(restart_ranks, restart, timeout=100) if restart_ranks else \
        run_py([*restart, "--serial"], timeout=100)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    check_complete(out)
    return run, seconds


@pytest.mark.timeout(250)
@pytest.mark.parametrize("name", [n if n in ("worker signal", "rank 0 raise", "worker exit") else
                                  pytest.param(n, marks=pytest.mark.slow) for n in FATAL])
def test_rank_crash_ends_every_rank_and_restart_completes(cfg, tmp_path, name):
    rank, kind, after, restart_ranks = FATAL[name]
    run, _ = crash_and_restart(cfg, tmp_path / "out", rank, kind, after, restart_ranks)
    err = run.stderr
    if kind == "raise":  # the rank says what went wrong; rank 0 flushes and tells how to go on
        assert f"hbl_mpi: fatal: rank {rank}: RuntimeError: injected exception outside node work" in err
        assert "rerun with --restart to continue" in err
        assert run.returncode == 4  # errors.EXIT_FATAL, through MPI_Abort
    else:  # hydra SIGKILLs every rank the moment one dies: only the crash's own line names it
        assert err.strip().splitlines()[0].startswith(f"hbl_mpi: rank {rank}: injected crash ({kind})"), err


@pytest.mark.timeout(250)
@pytest.mark.parametrize("rank", [1, pytest.param(0, marks=pytest.mark.slow)])
def test_launcher_that_keeps_the_job_liveness_ends_it(cfg, tmp_path, rank):
    """hydra -disable-auto-cleanup keeps the job when a rank exits (the srun default):
    without liveness.py rank 0 would wait for the dead worker's report forever (or the
    workers for a dead rank 0's orders). The survivors see the pid gone and abort.

    Rank 0 dies having handed out the first nodes, which take 60 s (slow nodes sleep
    while serving polls): the workers must notice mid-node, not at the node's end.
    """
    slow = [] if rank else sets(fault_slow_nodes=NODES[:2], fault_slow_seconds=60.0)
    run, _ = crash_and_restart(cfg, tmp_path / "out", rank, "exit", rank, 0, mpiexec_args=["-disable-auto-cleanup"],
                               extra=slow)
    assert any(line.startswith("hbl_mpi: fatal: rank ") and f"rank {rank} (pid " in line and "is gone" in line
               for line in run.stderr.splitlines()), run.stderr
    assert run.returncode == 4, run.returncode  # the watcher's MPI_Abort(EXIT_FATAL)


@pytest.mark.timeout(120)
def test_worker_dying_after_the_last_report_under_a_launcher_that_keeps_the_job(cfg, tmp_path):
    """One worker trains all 6 nodes, reports the last and exits at once; hydra
    -disable-auto-cleanup keeps the job. Rank 0 is then in the final barrier with a peer
    that died *before* rank 0 built that barrier's pid watch: the watch must still see
    it (visibility is judged at start-up, Topology.visible). It once judged visibility
    when the watch was built, took the dead worker for one in another PID namespace, and
    waited forever (seen once in the soak)."""
    out = tmp_path / "out"
    faults = sets(fault_crash_rank=1, fault_crash_kind="exit", fault_crash_after=len(NODES))
    run = run_mpi_timed(2, run_cmd(cfg, out, *faults), marker=str(out), timeout=100,
                        mpiexec_args=["-disable-auto-cleanup"])
    seconds = crash_seconds(run, 1, "exit")
    assert seconds is not None, run.stdout[-2000:] + run.stderr[-3000:]
    print(f"\n[time-to-exit] rank 1 exit after its last report (launcher keeps the job): {seconds:.2f} s")
    assert seconds < EXIT_LIMIT_S
    assert "rank 1 (pid " in run.stderr and "is gone" in run.stderr, run.stderr
    check_complete(out)  # every node was reported and flushed before the exit


@pytest.mark.timeout(120)
def test_worker_failing_after_the_last_node_is_not_waited_for(cfg, tmp_path):
    """One worker trains all 6 nodes, then raises outside node work: rank 0 has stopped
    scheduling (all done, waiting at the final barrier) and must still act on its report
    at once, not leave the job to the worker's 10 s grace (worker.FATAL_GRACE_S)."""
    out = tmp_path / "out"
    faults = sets(fault_crash_rank=1, fault_crash_kind="raise", fault_crash_after=len(NODES))
    run = run_mpi_timed(2, run_cmd(cfg, out, *faults), marker=str(out), timeout=100)
    seconds = crash_seconds(run, 1, "raise")
    assert seconds is not None, run.stdout[-2000:] + run.stderr[-3000:]
    print(f"\n[time-to-exit] rank 1 raise after the last node: {seconds:.2f} s, exit status {run.returncode}")
    assert "hbl_mpi: fatal: rank 0: rank 1 failed after the last node: RuntimeError: injected exception" \
        in run.stderr, run.stderr
    assert run.returncode == 4
    check_complete(out)  # every node was reported and flushed before the failure
