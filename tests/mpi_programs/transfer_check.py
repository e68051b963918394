"""Run under ``mpiexec -n 3``: rank 1 forks a held state to rank 2 while it keeps computing.

Rank 0 prints one JSON line with the checks (checksums equal, the sender computed while
its send was pending, and rank 0's CPU time during a 1 s wait); exit 1 on a mismatch.
Launched by tests/test_transfer_mpi.py through mpiutil.run_mpi, under a timeout (a
deadlock here fails that test instead of hanging CI).
"""

import json
import sys
import time

import torch
from mpi4py import MPI

from hbl_mpi.train.flat_state import ModelState
from hbl_mpi.transfer import OutgoingStates, recv_state_into, wait_all

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
torch.set_num_threads(1)
P = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000

if rank == 1:
    g = torch.Generator().manual_seed(7)
    state = ModelState(torch.randn(3 * P, generator=g), P, 42)
    out = OutgoingStates(comm)
    out.hold("1.2", state)
    out.send("1.2", dest=2, transfer_id=5)
    out.release("1.2")
    a = torch.randn(128, 128)
    steps = 0
    while out.held:  # keep "training"; the poll hook drives the send
        a = torch.tanh(a @ a) * 0.5
        out.progress()
        steps += 1
    comm.send({"checksum": state.checksum(), "steps_while_sending": steps}, dest=0, tag=1)
elif rank == 2:
    target = torch.zeros(3 * P)
    t0 = time.perf_counter()
    n_params, step = recv_state_into(comm, target, source=1, transfer_id=5)
    comm.send({"checksum": ModelState(target, n_params, step).checksum(),
               "recv_s": time.perf_counter() - t0}, dest=0, tag=2)
else:
    m1 = comm.recv(source=1, tag=1)
    m2 = comm.recv(source=2, tag=2)
if rank != 0:
    time.sleep(1.0)  # rank 0 waits for this second in a sleeping barrier
    wait_all([comm.Ibarrier()])
else:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    wait_all([comm.Ibarrier()])
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    result = {"sender": m1, "receiver": m2, "match": m1["checksum"] == m2["checksum"],
              "idle_wait_s": wall, "idle_cpu_s": cpu}
    print(json.dumps(result), flush=True)
    sys.exit(0 if result["match"] else 1)
