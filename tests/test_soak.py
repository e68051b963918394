"""Soak: 10 consecutive MPI runs with seeded random faults, each continuing the last.

Every launch draws node faults (fail / NaN / slow nodes) and, most of the time, a crash
(rank 0..2, exit / signal / raise, after 0-2 nodes), some under a launcher that keeps the
job when a rank exits (hydra ``-disable-auto-cleanup``: liveness.py must end it). A launch
after a partial or fatal one is ``--restart`` on the same --out (with new faults, so a
restart may crash too); after a complete one a fresh --out starts. After each launch:

* no hang: the launch ends under its timeout, and within 30 s of an injected crash;
* no corrupt file: results.h5 reads with pandas, every node listed as done really is
  (history, per-cell errors, finite losses, its parent done), no node twice;
* nothing finished is lost: every node done before a launch is still done after it,
  unless that restart said it runs again (no usable checkpoint of its final state);
* the exit status says what happened: 0 complete, 3 partial, neither after a crash.

At the end every out directory is completed by a clean restart: every plan node exactly
once, all done. ``HBL_SOAK_SEED`` picks another fault sequence (the default is fixed so
a failure reproduces).
"""

from __future__ import annotations

import json
import os
import random

import pytest

from faultutil import EXIT_LIMIT_S, NODES, check_complete, check_intact, crash_seconds, run_cmd, sets, write_config
from mpiutil import run_mpi_timed, run_py

LAUNCHES = 10
SEED = int(os.environ.get("HBL_SOAK_SEED", "7"))


def draw(rng: random.Random) -> tuple[dict, tuple[int, str] | None, list[str]]:
    """One launch's faults: (config overrides, (crash rank, kind) or None, mpiexec options)."""
    faults: dict = {}
    for key in ("fault_fail_nodes", "fault_nan_nodes", "fault_slow_nodes"):
        if rng.random() < 0.35:
            faults[key] = rng.sample(NODES, rng.randint(1, 2))
    if "fault_slow_nodes" in faults:
        faults["fault_slow_seconds"] = 0.5
    crash, mpiexec_args = None, []
    if rng.random() < 0.7:
        rank, kind = rng.randint(0, 2), rng.choice(["exit", "signal", "raise"])
        crash = (rank, kind)
        faults.update(fault_crash_rank=rank, fault_crash_kind=kind, fault_crash_after=rng.randint(0, 2))
        if kind == "exit" and rng.random() < 0.5:
            mpiexec_args = ["-disable-auto-cleanup"]
    return faults, crash, mpiexec_args


def rerun_nodes(out) -> set[str]:
    """Nodes a restart decided to train again, from its OUT/restart.json (the log line
    shortens long lists with " ...")."""
    path = out / "restart.json"
    if not path.exists():
        return set()
    with open(path) as f:
        return set(json.load(f)["rerun"])


@pytest.mark.slow  # each fault kind has its own default-tier test in test_faults.py
@pytest.mark.timeout(900)
def test_soak_random_faults(tmp_path):
    cfg = write_config(tmp_path)
    rng = random.Random(SEED)
    outs, out, restart = [], None, False
    done_before: set[str] = set()
    log = []
    worst = 0.0
    for i in range(LAUNCHES):
        faults, crash, mpiexec_args = draw(rng)
        if not restart:
            out = tmp_path / f"out{i}"
            outs.append(out)
            done_before = set()
        args = run_cmd(cfg, out, *(["--restart"] if restart else []), *sets(**faults))
        if os.path.exists(out / "restart.json"):
            os.remove(out / "restart.json")  # this launch's decision only
        run = run_mpi_timed(3, args, marker=str(out), timeout=150, mpiexec_args=mpiexec_args)  # a hang raises
        what = f"launch {i} ({'restart' if restart else 'new'} {out.name}, {faults}, {' '.join(mpiexec_args)})"
        context = f"{what}\nexit {run.returncode}\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
        seconds = crash_seconds(run, *crash) if crash is not None else None
        crashed = seconds is not None
        if crashed:
            worst = max(worst, seconds)
            assert seconds < EXIT_LIMIT_S, f"{seconds:.1f} s to exit after the crash: {context}"
            assert run.returncode not in (0, 2, 3), context
        else:
            assert run.returncode in (0, 3), context
        assert os.path.exists(out / "results.h5"), context  # written before any node trains
        nodes = check_intact(out)
        done = set(nodes.index[nodes["status"] == "done"])
        lost = done_before - done - rerun_nodes(out)
        assert not lost, f"finished nodes lost: {sorted(lost)}: {context}"
        if not crashed:
            partial = (nodes["status"] != "done").any() or len(nodes) < len(NODES)
            assert run.returncode == (3 if partial else 0), context
        restart = crashed or run.returncode != 0
        done_before = done
        log.append(f"{what}: exit {run.returncode}{f', crash, ended {seconds:.2f} s later' if crashed else ''}; "
                   f"{len(done)} done")
    print("\n" + "\n".join(log) + f"\n[soak] worst time-to-exit after a crash: {worst:.2f} s")
    for out in outs:  # finish every tree, faults off
        again = run_py(run_cmd(cfg, out, "--restart", "--serial"), timeout=120)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
        check_complete(out)
