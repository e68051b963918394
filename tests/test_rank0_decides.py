"""The one "rank 0 decides, every rank learns" handshake, without MPI: a fake communicator
plays rank 0 and then a worker rank on the verdict rank 0 broadcast."""

from __future__ import annotations

import pytest

from hbl_mpi.core.errors import InputError
from hbl_mpi.runtime.rank0_decides import Outcome, decide_on_rank0


class FakeComm:
    def __init__(self, rank: int, sent: list):
        self.rank, self.sent = rank, sent

    def Get_rank(self) -> int:
        return self.rank

    def bcast(self, obj, root=0):
        if self.rank == root:
            self.sent.append(obj)
            return obj
        return self.sent[-1]


def _both(decide, **kw):
    sent: list = []
    root = decide_on_rank0(FakeComm(0, sent), decide, **kw)
    other = decide_on_rank0(FakeComm(1, sent), lambda: pytest.fail("only rank 0 decides"), **kw)
    return root, other


def test_ok_shares_only_what_share_gives():
    root, other = _both(lambda: ("lock-object", 42), share=lambda v: v[1])
    assert root.ok and other.ok
    assert root.value == ("lock-object", 42)  # rank 0 keeps its own result
    assert other.value == 42


def test_input_error_reaches_every_rank_with_exit_2(capsys):
    def bad():
        raise InputError("data file 'x.h5' does not exist")

    root, other = _both(bad)
    assert root.outcome is other.outcome is Outcome.INPUT_ERROR
    assert root.exit_code == other.exit_code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["hbl_mpi: error: data file 'x.h5' does not exist"]  # printed once, by rank 0


def test_unexpected_error_is_fatal_everywhere(capsys):
    def boom():
        raise RuntimeError("disk gone")

    root, other = _both(boom)
    assert root.exit_code == other.exit_code == 4
    assert "hbl_mpi: fatal: rank 0: RuntimeError: disk gone" in capsys.readouterr().err
