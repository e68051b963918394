"""The rank group's bucketed gradient allreduce (hbl_mpi/grad_sync.py).

Pure parts (the bucket plan, the staging rule) without MPI; the collective itself under
``mpiexec -n 2`` (tests/mpi_programs/grad_sync_check.py) against a blocking allreduce of
the whole gradient, through the host-staging path with CUDA-awareness forced off, and
through the trainer against one rank on the whole batches.
"""

from __future__ import annotations

import json

import pytest
import torch

from mpiutil import ROOT, run_mpi


def test_buckets_cover_the_flat_gradient_in_backward_order():
    from hbl_mpi.runtime.grad_sync import plan_buckets

    sizes = [100, 10, 50, 5, 300, 1]
    buckets = plan_buckets(sizes, first_cap=6, cap=120)
    assert buckets == [[5, 4], [3, 2, 1, 0]]  # first closes at >= 6 elements, then at >= 120
    flat = [i for b in buckets for i in b]
    assert flat == list(reversed(range(len(sizes))))  # every parameter once, never split
    for b in buckets:  # consecutive indices: one contiguous slice of the flat buffer
        assert sorted(b) == list(range(min(b), max(b) + 1))
    assert plan_buckets(sizes, 1, 1) == [[i] for i in reversed(range(6))]
    assert plan_buckets([], 1, 1) == []
    with pytest.raises(ValueError):
        plan_buckets(sizes, 0, 1)


def test_staging_rule_follows_cuda_awareness(monkeypatch):
    from hbl_mpi.runtime.grad_sync import Staging, staging_for

    monkeypatch.setenv("HBL_CUDA_AWARE", "0")
    assert staging_for("cuda:0") is Staging.HOST
    assert staging_for("cpu") is Staging.DIRECT
    monkeypatch.setenv("HBL_CUDA_AWARE", "1")
    assert staging_for("cuda:0") is Staging.DIRECT


def test_sync_on_one_rank_leaves_gradients_and_reattaches_cleanly():
    from mpi4py import MPI

    from hbl_mpi.runtime.grad_sync import GroupComm, Reduction, Staging
    from hbl_mpi.train.flat_state import TrainState
    from hbl_mpi.uno import build_model

    ts = TrainState(build_model([12, 9], "tiny"), 1e-3)
    params = list(ts.module.parameters())
    x = (torch.randn(8, 12), torch.randn(8, 9))
    ts.forward(*x).square().sum().backward()
    expected = ts.grad.clone()
    for staging in (None, Staging.HOST, None):
        group = GroupComm(MPI.COMM_SELF, staging=staging, reduction=Reduction.ALLREDUCE)
        sync = group.gradient_sync(ts, bucket_bytes=64, first_bucket_bytes=16)
        assert group.gradient_sync(ts) is sync  # the same group reuses its sync
        ts.zero_grad()
        ts.forward(*x).square().sum().backward()
        sync.wait()
        assert torch.equal(ts.grad, expected)  # a sum over one rank is the identity
        assert sum(len(p._post_accumulate_grad_hooks or {}) for p in params) == len(params)
    assert sync.stats.steps == 1 and sync.stats.posted_in_backward == len(sync.buckets)
    sync.detach()
    assert ts.grad_sync is None and all(not p._post_accumulate_grad_hooks for p in params)


def test_split_counts_cut_like_array_split():
    import numpy as np

    from hbl_mpi.runtime.grad_sync import split_counts

    for n, size in [(10, 3), (7, 7), (5, 8), (0, 2), (1_000_003, 6)]:
        counts = split_counts(n, size)
        assert counts == [len(a) for a in np.array_split(np.arange(n), size)]
        assert sum(counts) == n and len(counts) == size


def test_reduction_rule_shards_only_host_gradients_mpi_reads_directly():
    from hbl_mpi.runtime.grad_sync import Reduction, Staging, reduction_for

    g = torch.zeros(4)
    assert reduction_for(g, Staging.DIRECT) is Reduction.SHARDED
    assert reduction_for(g, Staging.HOST) is Reduction.ALLREDUCE
    meta = torch.zeros(4, device="meta")  # a device tensor, without needing a GPU
    assert reduction_for(meta, Staging.DIRECT) is Reduction.ALLREDUCE


def test_sharded_step_on_one_rank_is_torch_adam():
    """On one rank the sharded step is torch's Adam run bucket by bucket: it must reach the
    state ``optimizer.step`` reaches (elementwise Adam: the same per-element arithmetic)."""
    from mpi4py import MPI

    from hbl_mpi.runtime.grad_sync import GroupComm, Reduction
    from hbl_mpi.train.flat_state import TrainState
    from hbl_mpi.uno import build_model

    torch.manual_seed(0)
    x = (torch.randn(16, 12), torch.randn(16, 9))
    plain = TrainState(build_model([12, 9], "tiny"), 1e-3)
    shard = TrainState(build_model([12, 9], "tiny"), 1e-3)
    shard.load(plain.snapshot())
    group = GroupComm(MPI.COMM_SELF)
    sync = group.gradient_sync(shard, bucket_bytes=256, first_bucket_bytes=64)
    assert sync.reduction is Reduction.SHARDED and len(sync.buckets) > 2
    for _ in range(3):
        for ts in (plain, shard):
            ts.zero_grad()
            ts.forward(*x).square().mean().backward()
        plain.optimizer.step()
        sync.step()
    sync.gather_state()  # a no-op on one rank's whole parts, but must not disturb them
    assert shard.step == plain.step == 3
    assert torch.allclose(shard.flat, plain.flat, rtol=1e-6, atol=1e-9)
    assert sync.stats.steps == 3 and sync.stats.adam_s > 0 and sync.stats.gathers == 1
    with pytest.raises(RuntimeError, match="sharded"):
        sync.wait()


@pytest.mark.timeout(150)
def test_group_of_two_matches_blocking_allreduce_and_one_rank():
    proc = run_mpi(2, [str(ROOT / "tests/mpi_programs/grad_sync_check.py")], timeout=140)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["ok"], res
    assert res["buckets_equal_blocking"] and res["host_staging_equal"]
    assert res["trainer_state_close"] and res["trainer_host_staging_bit_equal"]
    assert res["sharded_ranks_bit_identical"] and res["sharded_close_one_rank"]
