"""Fork cost: "parent done" -> "child ready to train" for a paper-preset state.

Run under MPI with 3 ranks (rank 1 holds the parent, rank 2 trains the child, rank 0
only collects timings):

    mpiexec -n 3 python bench/fork.py            # paper preset at Top21 widths
    mpiexec -n 3 python bench/fork.py --full     # more repetitions

Compared, on the same state (weights + Adam moments, float32), in one run:
  (a) hbl_mpi's transfer: header + one Isend/Irecv straight into the child's buffer, both
      buffers allocated as the runtime allocates them (``state.flat_buffer``: huge-page
      backed on Linux), and (a0) the same from/into plain torch allocations (4 KB pages,
      how the runtime allocated them before);
  (b) CANDLE's way: torch.save to a file, torch.load, copy into the child's buffer
      (page cache only), and (b') the same with an fsync before the child reads;
  (c) mpi4py's pickled lowercase send of the tensors, copied into the child's buffer;
and the physical limits: (d) a raw blocking Send/Recv of the same bytes,
(e) a warm in-memory copy of the same bytes. Median of repetitions.
Prints a table, then one JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch
from mpi4py import MPI

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hbl_mpi.train.flat_state import ModelState, flat_buffer  # noqa: E402
from hbl_mpi.transfer import OutgoingStates, recv_state_into, wait_all  # noqa: E402

import benchkit  # noqa: E402

RANKS = 3  # rank 1 holds the parent, rank 2 trains the child, rank 0 collects


def paper_param_count(widths: list[int]) -> int:
    from hbl_mpi.uno import build_model

    model = build_model(widths, "paper")
    return sum(p.numel() for p in model.parameters())


def parser() -> argparse.ArgumentParser:
    """The command line; with no arguments: the paper preset at Top21 widths, median of 5."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=0, help="parameter count (default: paper preset)")
    ap.add_argument("--widths", default="942,5270", help="feature widths for the paper preset (default: Top21, 16.2 M parameters)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--full", action="store_true", help="more repetitions (big machines)")
    ap.add_argument("--dir", default=None, help="folder for the file-based variant (default: tmp)")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    benchkit.mpiexec_self(__file__, RANKS)  # plain `python bench/fork.py`: run the documented 3-rank job
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if size != RANKS:
        if rank == 0:
            print("bench/fork.py needs exactly 3 ranks: mpiexec -n 3 python bench/fork.py", file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(1)
    reps = 15 if args.full else args.reps
    n_params = args.params or (paper_param_count([int(w) for w in args.widths.split(",")]) if rank == 0 else 0)
    n_params = comm.bcast(n_params, root=0)
    folder = comm.bcast(args.dir or (tempfile.mkdtemp(prefix="hbl_fork_") if rank == 0 else None), root=0)
    times: dict[str, list[float]] = {
        k: [] for k in ("hbl_transfer", "hbl_transfer_4k", "file", "file_fsync", "pickle", "raw_send", "memcpy")}

    if rank == 1:
        values = torch.randn(3 * n_params, generator=torch.Generator().manual_seed(1))
        state = ModelState(flat_buffer(3 * n_params).copy_(values), n_params, 7)  # as TrainState.snapshot()
        state_4k = ModelState(values, n_params, 7)
        out = OutgoingStates(comm)
    if rank == 2:
        buf = flat_buffer(3 * n_params).zero_()  # as TrainState.flat
        buf_4k = torch.zeros(3 * n_params)

    def sync() -> float:
        wait_all([comm.Ibarrier()])
        return time.perf_counter()

    def state_dict(st: ModelState, clone: bool = False) -> dict:
        """The state as the file and pickle variants ship it: three named tensors and the step."""
        P = n_params
        parts = {"params": st.flat[:P], "exp_avg": st.flat[P:2 * P], "exp_avg_sq": st.flat[2 * P:]}
        return {**{k: v.clone() if clone else v for k, v in parts.items()}, "step": st.step}

    def load_into(flat: torch.Tensor, d: dict) -> None:
        P = n_params
        flat[:P].copy_(d["params"])
        flat[P:2 * P].copy_(d["exp_avg"])
        flat[2 * P:].copy_(d["exp_avg_sq"])

    checks = []
    for rep in range(reps):
        # (a) hbl_mpi transfer
        t0 = sync()
        if rank == 1:
            out.hold("p", state)
            out.send("p", dest=2, transfer_id=rep)
            out.release("p")
            out.drain()
        if rank == 2:
            recv_state_into(comm, buf, source=1, transfer_id=rep)
            times["hbl_transfer"].append(time.perf_counter() - t0)
            checks.append(ModelState(buf, n_params, 7).checksum())
        # (a0) the same from/into plain torch allocations (4 KB pages)
        t0 = sync()
        if rank == 1:
            out.hold("p4", state_4k)
            out.send("p4", dest=2, transfer_id=1000 + rep)
            out.release("p4")
            out.drain()
        if rank == 2:
            recv_state_into(comm, buf_4k, source=1, transfer_id=1000 + rep)
            times["hbl_transfer_4k"].append(time.perf_counter() - t0)
            checks.append(ModelState(buf_4k, n_params, 7).checksum())
        # (b) torch.save -> torch.load through the filesystem; (b') the same with fsync
        # before the child may read (a durable checkpoint)
        path = os.path.join(folder, f"state_{rep}.pt")
        for key, durable, tag in (("file", False, 90), ("file_fsync", True, 93)):
            t0 = sync()
            if rank == 1:
                with open(path, "wb") as f:
                    torch.save(state_dict(state), f)
                    if durable:
                        f.flush()
                        os.fsync(f.fileno())
                comm.send(True, dest=2, tag=tag)
            if rank == 2:
                comm.recv(source=1, tag=tag)
                load_into(buf, torch.load(path))
                times[key].append(time.perf_counter() - t0)
                os.remove(path)
        # (c) pickled lowercase send
        t0 = sync()
        if rank == 1:
            comm.send(state_dict(state, clone=True), dest=2, tag=91)
        if rank == 2:
            load_into(buf, comm.recv(source=1, tag=91))
            times["pickle"].append(time.perf_counter() - t0)
        # (d) raw Send of the same bytes
        t0 = sync()
        if rank == 1:
            comm.Send([state.flat.numpy(), MPI.FLOAT], dest=2, tag=92)
        if rank == 2:
            comm.Recv([buf.numpy(), MPI.FLOAT], source=1, tag=92)
            times["raw_send"].append(time.perf_counter() - t0)
        # (e) warm memcpy
        if rank == 2:
            src = buf
            dst = flat_buffer(src.numel())
            dst.copy_(src)
            t0 = time.perf_counter()
            dst.copy_(src)
            times["memcpy"].append(time.perf_counter() - t0)
            del src, dst

    gathered = comm.gather((times, checks), root=0)
    if rank == 0:
        times = gathered[2][0]
        checks = gathered[2][1]
        med = {k: statistics.median(v) for k, v in times.items()}
        nbytes = 3 * n_params * 4
        res = {
            "params": n_params, "state_bytes": nbytes, "reps": reps,
            **{f"{k}_s": v for k, v in med.items()},
            "speedup_vs_file": med["file"] / med["hbl_transfer"],
            "speedup_vs_file_fsync": med["file_fsync"] / med["hbl_transfer"],
            "speedup_vs_pickle": med["pickle"] / med["hbl_transfer"],
            "speedup_vs_file_4k": med["file"] / med["hbl_transfer_4k"],
            "hugepage_gain": med["hbl_transfer_4k"] / med["hbl_transfer"],
            "fraction_of_raw_send": med["raw_send"] / med["hbl_transfer"],
            "hbl_transfer_GBps": nbytes / med["hbl_transfer"] / 1e9,
            "raw_send_GBps": nbytes / med["raw_send"] / 1e9,
            "memcpy_GBps": nbytes / med["memcpy"] / 1e9,
            "checksums_consistent": len(set(checks)) == 1,
            "mpi": MPI.Get_library_version().splitlines()[0].strip(),
        }
        print(f"fork of a {n_params / 1e6:.1f} M-parameter state (weights + Adam moments = "
              f"{nbytes / 1e6:.0f} MB), median of {reps}")
        print(f"{'method':<34}{'seconds':>10}{'GB/s':>8}")
        names = {"hbl_transfer": "(a) hbl_mpi Isend/Irecv", "hbl_transfer_4k": "(a0) the same, 4 KB-page buffers",
                 "file": "(b) torch.save -> torch.load",
                 "file_fsync": "(b') the same, fsync'd",
                 "pickle": "(c) pickled comm.send", "raw_send": "(d) raw Send (limit)",
                 "memcpy": "(e) warm memcpy (limit)"}
        for k, label in names.items():
            print(f"{label:<34}{med[k]:>10.4f}{nbytes / med[k] / 1e9:>8.2f}")
        print(f"speedup vs file {res['speedup_vs_file']:.1f}x (fsync'd: {res['speedup_vs_file_fsync']:.1f}x), vs pickle {res['speedup_vs_pickle']:.1f}x, "
              f"{100 * res['fraction_of_raw_send']:.0f} % of raw Send bandwidth")
        print(json.dumps(res))
        try:
            os.rmdir(folder)
        except OSError:
            pass


if __name__ == "__main__":
    main()
