"""State transfer over MPI point-to-point: bit-exact, progressing while the holder works."""

import json

import pytest

from mpiutil import ROOT, run_mpi


@pytest.mark.timeout(90)
def test_fork_transfer_is_exact_and_does_not_spin():
    proc = run_mpi(3, [str(ROOT / "tests/mpi_programs/transfer_check.py"), "1000000"], timeout=80)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["match"]
    assert res["sender"]["steps_while_sending"] > 0
    # rank 0 waited ~1 s in a sleeping barrier: it must not have burned that second
    assert res["idle_cpu_s"] < 0.25 * res["idle_wait_s"], res
