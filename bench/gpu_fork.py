"""A fork between two ranks' devices: hbl_mpi's transfer of a state on the device against a
raw ``Send`` of the same bytes from host memory (``bench/gpu_check.sh``).

    mpiexec -n 2 python bench/gpu_fork.py --device cuda   # each rank on its own GPU when there are two
    mpiexec -n 2 python bench/gpu_fork.py --device cpu --params 100000   # the dry run's CPU path

Rank 0 holds a paper-preset-sized state (weights + Adam moments, float32) on its device and
forks it to rank 1's device buffer with ``transfer.OutgoingStates`` / ``recv_state_into``
(CUDA-aware MPI directly, else through pinned host copies: the runtime's rule); the raw
variant is a blocking ``Send``/``Recv`` of a host buffer of the same size, the physical
floor of the interconnect without any device copy. Median of repetitions; the received
state's checksum must equal the sent one. Last stdout line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
from mpi4py import MPI

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hbl_mpi.runtime.cuda_mpi import cuda_aware  # noqa: E402
from hbl_mpi.train.flat_state import ModelState  # noqa: E402
from hbl_mpi.transfer import OutgoingStates, recv_state_into, wait_all  # noqa: E402

PAPER_PARAMS = 16_224_001  # Uno paper preset at Top21 widths (docs/models.md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    ap.add_argument("--params", type=int, default=PAPER_PARAMS)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    if comm.Get_size() != 2:
        if rank == 0:
            print("bench/gpu_fork.py needs 2 ranks", file=sys.stderr)
        sys.exit(2)
    if args.device == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dev = torch.device(args.device)
    n = 3 * args.params
    flat = torch.randn(n, generator=torch.Generator().manual_seed(1)).to(dev) if rank == 0 else torch.zeros(n, device=dev)
    host = np.ones(n, dtype=np.float32)
    out = OutgoingStates(comm) if rank == 0 else None
    times: dict[str, list[float]] = {"hbl_transfer": [], "raw_send_host": []}
    sent = ModelState(flat, args.params, 7).checksum() if rank == 0 else None
    got = None
    for rep in range(args.reps):
        wait_all([comm.Ibarrier()])
        t0 = time.perf_counter()
        if rank == 0:
            out.hold("p", ModelState(flat, args.params, 7))
            out.send("p", dest=1, transfer_id=rep)
            out.release("p")
            out.drain()
        else:
            recv_state_into(comm, flat, source=0, transfer_id=rep)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times["hbl_transfer"].append(time.perf_counter() - t0)
        wait_all([comm.Ibarrier()])
        t0 = time.perf_counter()
        if rank == 0:
            comm.Send([host, MPI.FLOAT], dest=1, tag=77)
        else:
            comm.Recv([host, MPI.FLOAT], source=0, tag=77)
            times["raw_send_host"].append(time.perf_counter() - t0)
    if rank == 1:
        got = ModelState(flat, args.params, 7).checksum()
    sent = comm.bcast(sent, root=0)
    res = comm.gather(times if rank == 1 else None, root=0)
    got = comm.bcast(got, root=1)
    if rank == 0:
        t = res[1]
        med = {k: statistics.median(v) for k, v in t.items()}
        nbytes = 4 * n
        print(json.dumps({"device": args.device, "cuda_aware_mpi": bool(cuda_aware()), "params": args.params,
                          "bytes": nbytes, "seconds": med,
                          "gb_per_s": {k: nbytes / v / 1e9 for k, v in med.items()},
                          "ratio_transfer_to_raw": med["hbl_transfer"] / med["raw_send_host"],
                          "checksum_equal": sent == got}))


if __name__ == "__main__":
    main()
