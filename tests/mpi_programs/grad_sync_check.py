"""Run under ``mpiexec -n 2``: the bucketed, overlapped gradient reduction of a rank group.

Checks, each against a reference computed here:
  buckets   ``GradSync`` with many small buckets gives exactly the blocking allreduce of
            the whole flat gradient (two ranks: a + b in any order is bit-identical);
  staging   the host-staging path (forced on CPU tensors, as a GPU without CUDA-aware MPI
            takes it; also with ``HBL_CUDA_AWARE=0`` set) gives the same bits;
  overlap   some buckets were posted by the gradient hooks, during backward;
  trainer   ``train_node`` on the group of two (each rank half of every batch) ends in the
            state one rank reaches on the whole batches, within float tolerance, and the
            host-staging run equals the direct allreduce run bit for bit;
  sharded   the CPU default (``Reduction.SHARDED``: reduce-scatter, Adam on each rank's
            part, allgather) leaves the whole state -- weights, both moments, step --
            bit-identical on the two ranks, within float tolerance of the allreduce run
            and of one rank; and ``wait`` refuses a sharded group (it has no whole sum).
  reduce    ``GroupComm.allreduce_`` (float64, the epoch sums) through host staging.
Rank 0 prints one JSON line; exit 1 if a check fails. Launched by tests/test_grad_sync.py
through mpiutil.run_mpi, under a timeout (a deadlock fails that test, never hangs CI).
"""

import json
import os
import sys

import numpy as np
import torch
from mpi4py import MPI

from hbl_mpi.data.dataset import CELL, DRUG, Dataset, FeatureGroup
from hbl_mpi.runtime.grad_sync import GroupComm, Reduction, Staging, staging_for
from hbl_mpi.tree.plan import NodeRows
from hbl_mpi.train.flat_state import TrainState
from hbl_mpi.train.device_tables import DeviceTables
from hbl_mpi.train.trainer import TrainSpec, train_node
from hbl_mpi.uno import build_model, initial_state

os.environ["HBL_CUDA_AWARE"] = "0"  # awareness forced off: a CUDA tensor would stage
comm = MPI.COMM_WORLD
rank = comm.Get_rank()
torch.set_num_threads(1)
WIDTHS = [40, 30]


def dataset(rows: int = 600) -> Dataset:
    rng = np.random.default_rng(11)
    xc = rng.standard_normal((20, WIDTHS[0]), dtype=np.float32)
    xd = rng.standard_normal((15, WIDTHS[1]), dtype=np.float32)
    ci = rng.integers(0, 20, rows).astype(np.int32)
    di = rng.integers(0, 15, rows).astype(np.int32)
    y = (0.5 + 0.2 * np.tanh(xc[ci, 0] * xd[di, 1]) + 0.01 * rng.standard_normal(rows)).astype(np.float32)
    return Dataset(np.array([f"C{i}" for i in range(20)], dtype=object),
                   np.array([f"D{i}" for i in range(15)], dtype=object),
                   [FeatureGroup("cell.rnaseq", CELL, [f"g{i}" for i in range(WIDTHS[0])], xc),
                    FeatureGroup("drug.descriptors", DRUG, [f"d{i}" for i in range(WIDTHS[1])], xd)],
                   ci, di, y)


def one_backward(ts: TrainState, tables: DeviceTables, rows: np.ndarray) -> None:
    ts.zero_grad()
    xs, y = tables.gather(tables.index(rows))
    ((ts.forward(*xs) - y).square().sum() / 64).backward()


ds = dataset()
tables = DeviceTables.from_dataset(ds)
init = initial_state(WIDTHS, "small", seed=3, learning_rate=1e-3)
checks = {"staging_rule": staging_for("cuda") is Staging.HOST and staging_for("cpu") is Staging.DIRECT}

# buckets / staging / overlap: one backward on this rank's rows, three ways
mine = np.arange(rank * 64, rank * 64 + 64)
ts = TrainState(build_model(WIDTHS, "small"), 1e-3)
ts.load(init)
one_backward(ts, tables, mine)
ref = ts.grad.clone()
GroupComm(comm).allreduce_(ref)  # one blocking allreduce of the whole flat gradient
grads = {}
for staging in (None, Staging.HOST):
    group = GroupComm(comm, staging=staging, reduction=Reduction.ALLREDUCE)
    sync = group.gradient_sync(ts, bucket_bytes=4096, first_bucket_bytes=1024)
    for _ in range(2):  # twice: the buckets reset after each wait
        one_backward(ts, tables, mine)
        sync.wait()
    grads[staging] = ts.grad.clone()
    checks[f"n_buckets_{staging}"] = len(sync.buckets)
    checks[f"posted_in_backward_{staging}"] = sync.stats.posted_in_backward
    checks[f"host_buffers_{staging}"] = sum(b.host is not None for b in sync.buckets)
checks["buckets_equal_blocking"] = bool(torch.equal(grads[None], ref))
checks["host_staging_equal"] = bool(torch.equal(grads[Staging.HOST], ref))
checks["hooks_do_not_pile_up"] = sum(len(p._post_accumulate_grad_hooks or {}) for p in ts.module.parameters()) \
    == len(list(ts.module.parameters()))

# trainer: the group of two against one rank on the whole batches (computed on both ranks)
train = np.arange(0, 480)
val = np.arange(480, 600)
rows = NodeRows(train=train, val=val, test=np.zeros(0, np.int64), val_cells=np.unique(ds.cell_index[val]).astype(np.int64),
                train_cells=np.unique(ds.cell_index[train]).astype(np.int64))
spec = TrainSpec(node="1", stage=1, max_epochs=3, patience=5, batch_size=64, seed=1, preset="small")
alone = train_node(tables, rows, init, spec, train_state=TrainState(build_model(WIDTHS, "small"), 1e-3))
outcomes = {}
for staging in (None, Staging.HOST):
    outcomes[staging] = train_node(tables, rows, init, spec, train_state=TrainState(build_model(WIDTHS, "small"), 1e-3),
                                   group=GroupComm(comm, staging=staging, reduction=Reduction.ALLREDUCE))
grp = outcomes[None]
checks["trainer_state_close"] = bool(torch.allclose(grp.inherit_state.flat, alone.inherit_state.flat,
                                                    rtol=1e-4, atol=1e-6))
checks["trainer_val_loss_rel_diff"] = abs(grp.val_loss - alone.val_loss) / alone.val_loss
checks["trainer_steps_equal"] = grp.steps == alone.steps
checks["trainer_host_staging_bit_equal"] = bool(torch.equal(outcomes[Staging.HOST].inherit_state.flat,
                                                            grp.inherit_state.flat))

# sharded: the CPU default, small buckets so that every bucket is cut between the ranks
sharded_group = GroupComm(comm)
sharded_ts = TrainState(build_model(WIDTHS, "small"), 1e-3)
sharded_sync = sharded_group.gradient_sync(sharded_ts, bucket_bytes=4096, first_bucket_bytes=1024)
checks["sharded_is_default_on_cpu"] = sharded_sync.reduction is Reduction.SHARDED
shd = train_node(tables, rows, init, spec, train_state=sharded_ts, group=sharded_group)
mine_flat = shd.inherit_state.flat.numpy()
other = np.empty_like(mine_flat)
comm.Sendrecv(mine_flat, dest=1 - rank, recvbuf=other, source=1 - rank)
checks["sharded_ranks_bit_identical"] = bool(np.array_equal(mine_flat, other)) and \
    comm.allreduce(shd.inherit_state.step, op=MPI.MAX) == comm.allreduce(shd.inherit_state.step, op=MPI.MIN)
checks["sharded_step_count"] = shd.inherit_state.step == grp.inherit_state.step
checks["sharded_close_allreduce"] = bool(torch.allclose(shd.inherit_state.flat, grp.inherit_state.flat,
                                                        rtol=1e-4, atol=1e-6))
checks["sharded_close_one_rank"] = bool(torch.allclose(shd.inherit_state.flat, alone.inherit_state.flat,
                                                       rtol=1e-4, atol=1e-6))
checks["sharded_adam_timed"] = sharded_sync.stats.adam_s > 0
try:
    sharded_sync.wait()
    checks["sharded_wait_refused"] = False
except RuntimeError:
    checks["sharded_wait_refused"] = True

# reduce: float64 sums through host staging
t = torch.tensor([1.5 * (rank + 1), 2.0], dtype=torch.float64)
GroupComm(comm, staging=Staging.HOST).allreduce_(t)
checks["reduce_host_staging"] = t.tolist() == [4.5, 4.0]

if rank == 0:
    ok = (checks["staging_rule"] and checks["buckets_equal_blocking"] and checks["host_staging_equal"]
          and checks["posted_in_backward_None"] > 0 and checks["n_buckets_None"] > 2
          and checks["host_buffers_Staging.HOST"] == checks["n_buckets_Staging.HOST"]
          and checks["hooks_do_not_pile_up"] and checks["trainer_state_close"]
          and checks["trainer_val_loss_rel_diff"] < 1e-4 and checks["trainer_steps_equal"]
          and checks["trainer_host_staging_bit_equal"] and checks["reduce_host_staging"]
          and checks["sharded_is_default_on_cpu"] and checks["sharded_ranks_bit_identical"]
          and checks["sharded_step_count"] and checks["sharded_close_allreduce"]
          and checks["sharded_close_one_rank"] and checks["sharded_adam_timed"] and checks["sharded_wait_refused"])
    checks["ok"] = bool(ok)
    print(json.dumps(checks), flush=True)
    sys.exit(0 if ok else 1)
