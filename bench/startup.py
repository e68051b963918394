"""Start-up and memory at Top21 size: launch -> first training step, peak RSS per rank.

    python bench/startup.py                      # Top21 synthetic file (made if missing), paper model, 4 ranks
    python bench/startup.py --data F.h5 --ranks 3 --preset small --steps 2   # any file, quicker

``mpiexec -n RANKS python -m hbl_mpi run`` (jobs/demo.toml's settings with the paper
model) is started on the data file, twice: on the CANDLE Uno HDF5 file itself (Top21:
529,940 rows, 13 GB of duplicated feature rows) and on its cached normalised form
(``python -m hbl_mpi data normalise F.h5 --out F.npz``, timed once here). Every rank runs
the real ``hbl_mpi run`` with time stamps hooked in (``--child``): rank 0 stamps its
``prepare`` (reading the file, building the plan) and the start of its scheduler; each
worker stamps the start of its first node and the end of its first ``--steps`` optimizer
steps, then writes its peak resident set (``ru_maxrss``, i.e. VmHWM), the bytes of the
normalised tables it holds and whether the training tables share the broadcast arrays'
memory (one copy). Once every rank has written, every rank leaves (``os._exit``) and the
run's output is deleted.

``launch_to_first_step_s`` is from the launch of ``mpiexec`` to the last worker's first
finished optimizer step. Peak RSS covers start-up and the first steps: the model and its
Adam state (paper: 195 MB per copy; a worker holds the training buffer, the seeded
initial state and the best-epoch copy), not the parent states a worker holds later in a
run. Last stdout line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

T0 = time.time()
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
import benchkit  # noqa: E402
RSS_TARGET_BYTES = 1.5e9


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _write(stamps: str, rank: int, rec: dict) -> None:
    tmp = os.path.join(stamps, f".rank{rank}.tmp")
    with open(tmp, "w") as f:
        json.dump(rec, f)
    os.replace(tmp, os.path.join(stamps, f"rank{rank}.json"))  # the driver never reads half a file


def _leave_when_all_stamped(stamps: str, ranks: int) -> None:
    """A daemon thread: once every rank has written its stamp, end this rank (the run is
    not needed any further; every rank leaves within 0.1 s, so mpiexec ends)."""
    import threading

    def watch() -> None:
        while len([f for f in os.listdir(stamps) if f.endswith(".json")]) < ranks:
            time.sleep(0.1)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def child(stamps: str, steps: int, argv: list[str]) -> int:
    """One rank of the timed ``hbl_mpi run``: hooks that stamp, then the real command."""
    from mpi4py import MPI

    from hbl_mpi.run import context
    from hbl_mpi import scheduler
    from hbl_mpi.__main__ import main
    from hbl_mpi.commands import run as run_cmd

    rank = MPI.COMM_WORLD.Get_rank()
    _leave_when_all_stamped(stamps, MPI.COMM_WORLD.Get_size())
    rec: dict = {"rank": rank, "main": T0}
    prepare, schedule, train_node = run_cmd.prepare, scheduler.scheduler_main, context.train_node

    def timed_prepare(args):
        rec["prepare_start"] = time.time()
        out = prepare(args)
        rec["prepare_end"] = time.time()
        return out

    def timed_scheduler(ctx, *a, **kw):
        rec.update(scheduler_start=time.time(), peak_rss=_maxrss(), table_bytes=ctx.dataset.normalized_nbytes())
        _write(stamps, rank, rec)
        return schedule(ctx, *a, **kw)

    def timed_train(tables, rows, init, spec, *, poll=None, **kw):
        if "first_node" in rec:
            return train_node(tables, rows, init, spec, poll=poll, **kw)
        rec["first_node"] = time.time()
        done = [0]

        def stamp() -> None:
            done[0] += 1
            if done[0] == 1:
                rec["first_step"] = time.time()
            if done[0] == steps:
                rec.update(steps_done=time.time(), peak_rss=_maxrss(), table_bytes=tables.nbytes)
                _write(stamps, rank, rec)
            if poll is not None:
                poll()

        return train_node(tables, rows, init, spec, poll=stamp, **kw)

    # a worker's tables (RunContext.tables): do they alias the broadcast Dataset's arrays?
    from hbl_mpi.train.device_tables import DeviceTables

    from_dataset = DeviceTables.from_dataset.__func__

    def tables_from(cls, ds, device="cpu"):
        t = from_dataset(cls, ds, device)
        rec["dataset_bytes"] = ds.normalized_nbytes()
        rec["tables_share_dataset"] = all(f.data_ptr() == g.values.ctypes.data for f, g in zip(t.features, ds.groups))
        return t

    DeviceTables.from_dataset = classmethod(tables_from)
    # RunContext.train calls the train_node that context.py imported: patch that name
    run_cmd.prepare, scheduler.scheduler_main, context.train_node = timed_prepare, timed_scheduler, timed_train
    return main(argv)


def _mpiexec() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else "mpiexec"


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def timed_run(args, data: str, label: str) -> dict:
    stamps = os.path.join(args.work, f"stamps_{label}")
    os.makedirs(stamps)
    out = os.path.join(args.work, f"run_{label}")
    cmd = [_mpiexec(), "-n", str(args.ranks), sys.executable, os.path.abspath(__file__), "--child", stamps,
           "--steps", str(args.steps), "--", "run", os.path.join(ROOT, "jobs", "demo.toml"),
           "--set", f"data={json.dumps(os.path.abspath(data))}", "--set", f"model={json.dumps(args.preset)}",
           "--set", f"batch_size={args.batch}", "--set", "threads=1", "--set", f"device={json.dumps(args.device)}",
           "--out", out, "--overwrite"]
    t_launch = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + args.timeout
    def stamped() -> bool:
        return len([f for f in os.listdir(stamps) if f.endswith(".json")]) >= args.ranks

    try:
        while not stamped():
            if proc.poll() is not None and not stamped():
                o, e = proc.communicate()
                raise SystemExit(f"bench/startup.py: the {label} run ended (exit {proc.returncode}) before every "
                                 f"rank stamped:\n{o[-2000:]}\n{e[-3000:]}")
            if time.monotonic() > deadline:
                raise SystemExit(f"bench/startup.py: the {label} run took longer than --timeout {args.timeout} s")
            time.sleep(0.1)
    finally:
        try:  # every rank leaves by itself once all have stamped (``_leave_when_all_stamped``)
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # hydra forwards it to every rank
            proc.wait()
    ranks = {}
    for r in range(args.ranks):
        with open(os.path.join(stamps, f"rank{r}.json")) as f:
            ranks[r] = json.load(f)
    shutil.rmtree(out, ignore_errors=True)
    r0 = ranks[0]
    workers = [ranks[r] for r in range(1, args.ranks)]
    return {
        "data": data, "file_bytes": os.path.getsize(data),
        "launch_to_first_step_s": max(w["first_step"] for w in workers) - t_launch,
        "launch_to_first_node_s": max(w["first_node"] for w in workers) - t_launch,
        # where the time went, in order: interpreter and imports, rank 0 reads the file and
        # builds the plan, broadcast + topology + each rank's context, first assignments,
        # the first optimizer step
        "phases_s": {
            "launch_to_imports_done": r0["prepare_start"] - t_launch,
            "rank0_read_and_plan": r0["prepare_end"] - r0["prepare_start"],
            "broadcast_topology_context": r0["scheduler_start"] - r0["prepare_end"],
            "scheduler_to_first_nodes": max(w["first_node"] for w in workers) - r0["scheduler_start"],
            "first_step": max(w["first_step"] - w["first_node"] for w in workers),
        },
        "rank0_launch_to_main_s": r0["main"] - t_launch,
        "rank0_read_and_plan_s": r0["prepare_end"] - r0["prepare_start"],
        "rank0_peak_rss_bytes": r0["peak_rss"],
        "worker_peak_rss_bytes": [w["peak_rss"] for w in workers],
        "worker_table_bytes": [w["table_bytes"] for w in workers],
        "worker_dataset_bytes": [w["dataset_bytes"] for w in workers],
        "worker_tables_share_dataset": [w["tables_share_dataset"] for w in workers],
        "normalised_bytes": r0["table_bytes"],
    }


def parser() -> argparse.ArgumentParser:
    """The command line; with no arguments: the Top21-shaped synthetic file (made when missing), paper
    model, 4 ranks, under ``<temp dir>/hbl_startup``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(benchkit.default_work("startup"), "top21.h5"),
                    help="Uno HDF5 file (default: <temp dir>/hbl_startup/top21.h5, the top21 synthetic preset "
                         "with seed 1, written there if missing)")
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--preset", default="paper", help="model preset (default paper)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps each worker takes before stamping")
    ap.add_argument("--work", default=os.path.join(benchkit.default_work("startup"), "work"),
                    help="scratch folder (replaced; default: <temp dir>/hbl_startup/work)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                    help="cuda: the workers' tables and model on their GPU (never run here: no GPU was at hand)")
    ap.add_argument("--no-cache", dest="cache", action="store_false", help="skip the normalised-cache run")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per run before giving up")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = parser()
    args, rest = ap.parse_known_args(argv)
    if args.child:
        sys.exit(child(args.child, args.steps, rest[1:] if rest[:1] == ["--"] else rest))
    if args.ranks < 2 or args.steps < 1:
        ap.error("--ranks >= 2 and --steps >= 1")
    benchkit.say(__file__, f"data {args.data}, work folder {args.work} (replaced), {args.ranks} ranks, "
                           f"model {args.preset}")
    made_s = None
    if not os.path.exists(args.data):
        t = time.time()
        benchkit.ensure_data(args.data, __file__, preset="top21", seed=1)  # ~13 GB of duplicated rows
        made_s = time.time() - t
    if os.path.exists(args.work):
        shutil.rmtree(args.work)
    os.makedirs(args.work)
    res = {"ranks": args.ranks, "device": args.device, "preset": args.preset, "batch": args.batch, "steps": args.steps,
           "synth_s": made_s, "h5": timed_run(args, args.data, "h5")}
    if args.cache:
        npz = os.path.join(args.work, "normalised.npz")
        t = time.time()
        p = subprocess.run([sys.executable, "-m", "hbl_mpi", "data", "normalise", args.data, "--out", npz],
                           capture_output=True, text=True, env=_env())
        if p.returncode != 0:
            raise SystemExit(p.stderr[-3000:])
        res["normalise_s"] = time.time() - t
        res["npz"] = timed_run(args, npz, "npz")
        os.remove(npz)
    worst = max(max(r["worker_peak_rss_bytes"]) for k, r in res.items() if k in ("h5", "npz"))
    res["worker_peak_rss_max_bytes"] = worst
    res["worker_rss_target_met"] = worst < RSS_TARGET_BYTES
    res["one_table_copy_per_worker"] = all(all(r["worker_tables_share_dataset"]) for k, r in res.items()
                                           if k in ("h5", "npz"))
    print(f"start-up: mpiexec -n {args.ranks} hbl_mpi run, model {args.preset}, batch {args.batch}, "
          f"first {args.steps} steps per worker")
    print(f"{'data file':<12}{'file MB':>10}{'launch->1st step s':>20}{'rank 0 read s':>15}"
          f"{'rank 0 RSS MB':>15}{'worker RSS MB (max)':>21}{'tables MB':>11}")
    for k in ("h5", "npz"):
        if k in res:
            r = res[k]
            print(f"{k:<12}{r['file_bytes'] / 1e6:>10.1f}{r['launch_to_first_step_s']:>20.1f}"
                  f"{r['rank0_read_and_plan_s']:>15.1f}{r['rank0_peak_rss_bytes'] / 1e6:>15.0f}"
                  f"{max(r['worker_peak_rss_bytes']) / 1e6:>21.0f}{max(r['worker_table_bytes']) / 1e6:>11.1f}")
    for k in ("h5", "npz"):
        if k in res:
            print(f"{k} phases (s): " + ", ".join(f"{n} {v:.1f}" for n, v in res[k]["phases_s"].items()))
    if "normalise_s" in res:
        print(f"data normalise (once per data set): {res['normalise_s']:.1f} s")
    print(f"workers' peak RSS < {RSS_TARGET_BYTES / 1e9:.1f} GB: {res['worker_rss_target_met']}; "
          f"training tables alias the broadcast arrays (one copy): {res['one_table_copy_per_worker']}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
