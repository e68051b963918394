"""``python -m hbl_mpi run CONFIG.toml``: train the whole tree (MPI, or ``--serial``).

Start-up order is what keeps bad input from hanging or half-writing anything:
1. rank 0 alone reads the config, the data and any previous results and builds the plan
   (other ranks wait in a non-blocking barrier, sleeping);
2. rank 0 broadcasts either the error (every rank exits 2, rank 0 prints one line) or
   the validated config and the normalised dataset (never read P times);
3. all ranks agree on the topology (same verdict on a bad ``group_size`` everywhere);
4. only then rank 0 creates the output directory and the results file (written at once,
   so a crash at any later moment leaves a file to read).

A failure that is not the user's (a bug, a dead rank) ends every rank with exit 4 and a
message naming the rank and the cause, never a hang: an unexpected error in ``prepare``
is broadcast like an input error; every wait here sleeps and, under launchers that keep
a job running when one rank dies, watches the other ranks' processes (``liveness.py``).
"""

from __future__ import annotations

import json
import os
import sys
import time

from hbl_mpi.core import interrupt
from hbl_mpi.runtime.abort import abort_job
from hbl_mpi.core.atomic import WriteFailed, remove_stale_temporaries, replace_text
from hbl_mpi.core.errors import EXIT_FATAL, EXIT_INPUT, InputError, error_line, fatal_line


def configure(p) -> None:
    p.add_argument("config", nargs="?", help="TOML config file (keys: docs/configuration.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (TOML value syntax), repeatable")
    p.add_argument("--out", help="output directory (overrides the config's `out`)")
    p.add_argument("--serial", action="store_true", help="run in one process without MPI")
    p.add_argument("--restart", action="store_true",
                   help="continue the run in OUT: finished nodes are not run again")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT/results.h5")


OUT_FILES = ("results.h5", "run_stats.json", "restart.json", ".lock")
"""The files a run writes directly in OUT (besides ckpts/), none of which may be an input."""

NAME_MAX = 255
"""Bytes in one path component on every Linux file system hbl_mpi runs on."""


def _check_out_path(path: str) -> None:
    """An output path the file system can hold, judged before any directory is made
    (``os.makedirs`` would otherwise create the parts that fit and leave them behind)."""
    if not path or not path.strip():
        raise InputError("the output directory (--out or config key 'out') is empty")
    if "\x00" in path:
        raise InputError("the output directory contains a NUL character")
    full = os.fsencode(os.path.abspath(path))
    for part in full.split(b"/"):
        if len(part) > NAME_MAX:
            raise InputError(f"output path {path[:40]!r}...: a part of it is {len(part)} bytes long; "
                             f"the file system allows {NAME_MAX}")
    limit = _path_max()
    # the longest file written inside OUT (a checkpoint) adds its own name to OUT's
    if len(full) + 64 >= limit:
        raise InputError(f"output path {path[:40]!r}... is {len(full)} bytes long; with the files hbl_mpi writes "
                         f"inside it that exceeds the system's {limit}-byte limit (PATH_MAX)")


def _path_max() -> int:
    try:
        return int(os.pathconf("/", "PC_PATH_MAX"))
    except (OSError, ValueError):
        return 4096


def _writable_dir(path: str) -> None:
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise InputError(f"output path {path!r}: {probe!r} exists and is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"output directory {path!r} is not writable ({probe!r})")


def prepare(args):
    """Rank 0: everything that can fail on user input, with no side effects.

    Returns the context (with ``ctx.run_info``: what a restart skips, reruns and resumes)
    and the previous run's results to continue (minus the nodes that run again).
    """
    with interrupt.deferred():  # numpy, pandas, h5py: C extensions (see interrupt.deferred)
        from hbl_mpi.core.config import load_config
        from hbl_mpi.core.output_guard import check_outputs
        from hbl_mpi.data import read_data
        from hbl_mpi.runtime.faults import check_fault_nodes
        from hbl_mpi.store.outlock import check_free
        from hbl_mpi.tree.plan import PlanSpec, plan_for
        from hbl_mpi.store.results import read_results, results_path

    if args.config is None and not args.overrides:
        raise InputError("run needs a CONFIG.toml (or --set data=... at least)")
    if args.restart and args.overwrite:
        raise InputError("--restart continues the run in OUT and --overwrite replaces it: give one of them")
    cfg = load_config(args.config, args.overrides, args.out)
    _check_out_path(cfg.out)
    _writable_dir(cfg.out)
    check_free(cfg.out)  # a live run there: refused now (the lock itself is taken after the checks)
    check_outputs([os.path.join(cfg.out, name) for name in OUT_FILES], [cfg.data, args.config])
    _check_ckpts(cfg)
    path = results_path(cfg.out)
    previous = None
    if args.restart:
        if os.path.lexists(path):
            _check_regular_in_out(path)
            previous = read_results(path)
    elif cfg.ckpt_restart_mode == "required":
        raise InputError("ckpt_restart_mode = required continues an earlier run from its checkpoints: "
                         "add --restart (with that run's --out)")
    elif os.path.exists(path) and not args.overwrite:
        raise InputError(f"{path!r} exists: use --restart to continue that run, --overwrite to replace it, "
                         "or another --out")
    dataset = read_data(cfg.data)
    if cfg.cell_metadata:  # the config's metadata replaces the file's own; bad metadata is exit 2 here
        from hbl_mpi.data import metadata as M

        dataset, info = M.attach(dataset, M.read_metadata_csv(cfg.cell_metadata),
                                 f"config key 'cell_metadata' {cfg.cell_metadata!r}")
        print(f"[hbl_mpi] {info.line()}", flush=True)
    plan = plan_for(dataset, PlanSpec.from_config(cfg))
    check_fault_nodes(cfg, plan.trained_nodes())
    # torch only now: a bad config or data file is rejected in a fraction of a second
    with interrupt.deferred():  # SIGTERM inside a C extension's import aborts: take it after
        from hbl_mpi.checkpoint import check_compatible, drop_rerun
        from hbl_mpi.run.context import RunContext
        from hbl_mpi.train.device import resolve_device

    ctx = RunContext(cfg, dataset, plan, resolve_device(cfg.device))
    ctx.check_model()  # a plug-in's file, factory, parameters, buffers and output shape
    if previous is not None:
        check_compatible(previous, cfg, ctx.data_checksum, ctx.model.fingerprint_hash)
    if cfg.expand == "adaptive":  # rank 0 grows the tree; a restart replays its rounds first
        from hbl_mpi.adaptive.growth import adaptive_plan, keep_created, regrow

        ctx.plan, ctx.expander = adaptive_plan(plan, cfg)
        regrow(ctx.plan, ctx.expander, previous)
        previous = keep_created(previous, ctx.plan)
    ctx.results_seen = _file_identity(path)
    ctx.run_info = ctx.plan_restart(previous, bool(args.restart))
    return ctx, drop_rerun(previous, ctx.run_info.rerun)


def _check_regular_in_out(path: str) -> None:
    """A file of OUT that a restart reads must be a regular file, not a link (to data
    elsewhere, to /dev/zero), a FIFO (a reader would block) or a device (safe_open.py)."""
    from hbl_mpi.core.safe_open import UnsafeFile, check_regular

    try:
        check_regular(path)
    except UnsafeFile as e:
        raise InputError(f"{path!r} is {e.what.split(',')[0]}: --restart reads only a regular results file "
                         "that a run wrote; remove it, or use another --out") from None


def _check_ckpts(cfg) -> None:
    """OUT/ckpts is a path in OUT like any other: a real directory this program made, or
    absent. Through a link a fresh run would write its checkpoints elsewhere, and starting
    a node afresh would rename and delete node folders there. A ``ckpt_directory`` set in
    the config is the user's choice and is used as given."""
    from hbl_mpi.core.safe_open import UnsafeFile, check_own_dir

    if cfg.ckpt_directory:
        return
    ckpts = os.path.join(cfg.out, "ckpts")
    try:
        check_own_dir(ckpts)
    except UnsafeFile as e:
        raise InputError(f"{ckpts!r} is {e.what.split(',')[0]}: hbl_mpi reads, writes and removes no checkpoint "
                         "through it; remove it, or set ckpt_directory to the directory you mean") from None


def _file_identity(path: str):
    """What ``path`` was when prepare() judged it (None: absent), to notice a change."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _write_failed(e, out: str, writer) -> str:
    from hbl_mpi.store.results import write_failed_line  # pandas: not at parser build time

    return write_failed_line(e, out, writer)


OUT_FILES = ("results.h5", "run_stats.json", "restart.json")
"""The files a run writes in OUT through ``atomic.replace_file`` (their stale temporaries are removed)."""


def _lock_out(ctx, args):
    """Take OUT's lock (``outlock.py``), then make sure OUT is still what prepare() saw:
    a run that ended while this one read its data may have written results.h5 since."""
    from hbl_mpi.store.outlock import acquire
    from hbl_mpi.store.results import results_path

    lock = acquire(ctx.cfg.out)
    if _file_identity(results_path(ctx.cfg.out)) != ctx.results_seen:
        lock.release()
        raise InputError(f"{results_path(ctx.cfg.out)!r} changed while this run was starting (another run on "
                         "the same --out?): start again")
    # with the lock held no writer of ours is alive: a temporary file of a flush killed part-way is stale
    removed, freed = remove_stale_temporaries(ctx.cfg.out, OUT_FILES)
    if removed:
        print(f"[hbl_mpi] removed {removed} temporary file(s) ({freed / 1e6:,.1f} MB) that an interrupted write "
              f"left in {ctx.cfg.out}", flush=True)
    return lock


def _log_restart(ctx) -> None:
    """Print what the restart skips, reruns and resumes; the full lists go to OUT/restart.json."""
    if ctx.run_info is None or not ctx.run_info.restart:
        return
    ctx.run_info.write(os.path.join(ctx.cfg.out, "restart.json"))
    for line in ctx.run_info.summary(len(ctx.plan.trained_nodes())):
        print(f"[hbl_mpi] {line}", flush=True)


def _clear_overwritten_checkpoints(ctx, overwrite: bool) -> None:
    """``--overwrite`` replaces the run in OUT, its checkpoints in OUT/ckpts too: left there,
    a later ``--restart`` of the new run would take the old run's final checkpoints for
    its own. A ``ckpt_directory`` set in the config is the user's to manage: left alone."""
    import shutil

    if not overwrite or ctx.cfg.ckpt_directory:
        return
    ckpts = ctx.ckpt_params.ckpt_directory
    if os.path.isdir(ckpts):
        shutil.rmtree(ckpts)
        print(f"[hbl_mpi] --overwrite: removed the replaced run's checkpoints in {ckpts}", flush=True)


def _make_writer(ctx, previous):
    from hbl_mpi.data.dataset import combine_truth
    from hbl_mpi.store.results import ResultsWriter, results_path

    attrs = ctx.run_attrs()
    truth = combine_truth(ctx.dataset.truth, ctx.dataset.drug_truth)
    writer = ResultsWriter(
        results_path(ctx.cfg.out), config=attrs["config"], versions=attrs["versions"],
        data_checksum=attrs["data_checksum"], plan_frame=ctx.plan.to_frame(), truth=truth,
        flush_seconds=ctx.cfg.flush_seconds, previous=previous, static=ctx.static_tables(),
    )
    writer.flush()  # the file exists before any node trains: a crash from now on leaves one
    return writer


def _summary(ctx, stats: dict, path: str) -> None:
    c = stats["counts"]
    print(f"[hbl_mpi] finished: {c['done']} done, {c['failed']} failed, {c['skipped']} skipped "
          f"in {stats['wall_s']:.1f} s", flush=True)
    if "rank0_cpu_fraction" in stats:
        print(f"[hbl_mpi] rank 0 CPU: {stats['rank0_cpu_s']:.2f} s = "
              f"{100 * stats['rank0_cpu_fraction']:.1f} % of wall time; {stats['transfers']} state "
              f"transfers between groups", flush=True)
    print(f"[hbl_mpi] results: {path}", flush=True)
    print(f"[hbl_mpi] next: python -m hbl_mpi report {path} --out {os.path.join(ctx.cfg.out, 'report')}",
          flush=True)


def _exit_code(stats: dict) -> int:
    from hbl_mpi.drivers.serial import exit_code

    return exit_code(stats["counts"])


def run_serial_command(args) -> int:
    ctx, previous = prepare(args)
    with interrupt.deferred():  # SIGTERM inside a C extension's import aborts: take it after
        import torch

        from hbl_mpi.train.device import default_threads
        from hbl_mpi.drivers.serial import run_serial

    torch.set_num_threads(ctx.cfg.threads or default_threads(1))
    lock = _lock_out(ctx, args)
    writer = None
    try:
        _clear_overwritten_checkpoints(ctx, args.overwrite)
        writer = _make_writer(ctx, previous)
        print(f"[hbl_mpi] serial run: {len(ctx.plan)} nodes, data {ctx.cfg.data}, out {ctx.cfg.out}", flush=True)
        _log_restart(ctx)
        stats = run_serial(ctx, writer, ctx.run_info.done)
        _summary(ctx, stats, writer.path)
        return _exit_code(stats)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: keep every finished node
        return _interrupted_serial(ctx, writer, e)
    except WriteFailed as e:
        print(fatal_line(_write_failed(e, ctx.cfg.out, writer)), file=sys.stderr, flush=True)
        return EXIT_FATAL
    finally:
        lock.release()


def _interrupted_serial(ctx, writer, e: BaseException) -> int:
    """The serial run's end on SIGINT/SIGTERM: flush, one line, 130/143 (interrupt.py)."""
    if writer is None:
        print(f"hbl_mpi: {interrupt.what(e)}", file=sys.stderr, flush=True)
        return interrupt.exit_code(e)
    try:
        writer.flush()
    except WriteFailed as err:
        print(fatal_line(_write_failed(err, ctx.cfg.out, writer)), file=sys.stderr, flush=True)
        return EXIT_FATAL
    print(f"hbl_mpi: {interrupt.what(e)}: {writer.saved_done} finished nodes are in {writer.path}; "
          "continue with run --restart and the same --out", file=sys.stderr, flush=True)
    return interrupt.exit_code(e)


def _wait_quietly(comm, watch=None, worker_fatal: bool = False) -> None:
    """A barrier that sleeps instead of spinning (while rank 0 reads the data, while idle
    ranks wait for the end); a peer in ``watch`` that dies aborts the job.

    ``worker_fatal`` (rank 0, after the last node): a worker that failed outside node work
    once the scheduler had stopped listening never reaches this barrier; its report aborts
    the job now, not after the worker's ``FATAL_GRACE_S`` wait for it.
    """
    from mpi4py import MPI

    from hbl_mpi.runtime.liveness import describe_death
    from hbl_mpi.runtime.messages import TAG_REPORT, WorkerFatal
    from hbl_mpi.transfer import wait_all

    def poll() -> None:
        for rank, who in (watch.dead() if watch is not None else {}).items():
            abort_job(comm, EXIT_FATAL, fatal_line(describe_death(rank, who), rank=comm.Get_rank()))
        if worker_fatal and comm.iprobe(source=MPI.ANY_SOURCE, tag=TAG_REPORT):
            msg = comm.recv(source=MPI.ANY_SOURCE, tag=TAG_REPORT)
            if isinstance(msg, WorkerFatal):
                abort_job(comm, EXIT_FATAL,
                          fatal_line(f"rank {msg.rank} failed after the last node: {msg.error}", rank=0))

    active = worker_fatal or (watch is not None and bool(watch.peers))
    wait_all([comm.Ibarrier()], poll=poll if active else None)


def _watch_rank0(comm):
    """Workers on rank 0's host watch it while it reads the data (it may die of OOM there)."""
    from mpi4py import MPI

    from hbl_mpi.runtime.liveness import PeerWatch, identity, is_alive

    name = MPI.Get_processor_name()
    root_name, root = comm.bcast((name, identity()) if comm.Get_rank() == 0 else None, root=0)
    if comm.Get_rank() == 0 or name != root_name or not is_alive(root):
        return None  # another host (or PID namespace): the launcher's job
    return PeerWatch({0: root})


def run_mpi(args) -> int:
    with interrupt.deferred():  # SIGTERM inside a C extension's import aborts: take it after
        import torch
        from mpi4py import MPI

        from hbl_mpi.run.context import RunContext

        from hbl_mpi.train.device import default_threads
        from hbl_mpi.runtime.faults import check_fault_rank
        from hbl_mpi.tree.plan import PlanSpec, plan_for
        from hbl_mpi.scheduler import scheduler_main
        from hbl_mpi.runtime.topology import bind_device, build_topology, idle_ranks
        from hbl_mpi.runtime.rank0_decides import decide_on_rank0
        from hbl_mpi.worker import worker_main

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    root_watch = _watch_rank0(comm)
    t0 = time.perf_counter()
    prepared = decide_on_rank0(comm, lambda: prepare(args),
                               share=lambda p: (p[0].cfg, p[0].dataset, p[0].run_info),
                               before_bcast=lambda: _wait_quietly(comm, root_watch))
    if not prepared.ok:
        return prepared.exit_code
    if rank == 0:
        ctx, previous = prepared.value
        cfg, dataset, run_info = ctx.cfg, ctx.dataset, ctx.run_info
    else:
        cfg, dataset, run_info = prepared.value
    try:
        topo = build_topology(comm, cfg.group_size)
        check_fault_rank(cfg, topo.world_size)
        if rank != 0:  # the rank's own device (cuda:<local rank>); the config stays as given
            device = torch.device(bind_device(cfg.device, topo.local_rank))
            ctx = RunContext(cfg, dataset, plan_for(dataset, PlanSpec.from_config(cfg)), device,
                             run_info=run_info)
    except InputError as e:  # identical on every rank
        if rank == 0:
            print(error_line(str(e)), file=sys.stderr, flush=True)
        return EXIT_INPUT
    # rank 0 alone takes OUT's lock (outlock.py); every rank learns the verdict, none waits
    locked = decide_on_rank0(comm, lambda: _lock_out(ctx, args))
    if not locked.ok:
        return locked.exit_code
    workers_here = topo.ranks_on_host - (1 if topo.host_of_rank[0] == topo.host_of_rank[rank] else 0)
    torch.set_num_threads(1 if rank == 0 else (cfg.threads or default_threads(max(1, workers_here))))
    group = topo.group
    group_comm = comm.Split(group if group is not None else MPI.UNDEFINED, rank)
    if rank == 0:
        try:
            _clear_overwritten_checkpoints(ctx, args.overwrite)
            writer = _make_writer(ctx, previous)
        except KeyboardInterrupt:  # SIGINT/SIGTERM: run()'s handler ends every rank
            raise
        except BaseException as e:  # e.g. the disk filled up since prepare() looked
            why = (_write_failed(e, cfg.out, None) if isinstance(e, WriteFailed)
                   else f"cannot write the results file: {type(e).__name__}: {e}")
            abort_job(comm, EXIT_FATAL, fatal_line(why, rank=0))
        print(f"[hbl_mpi] MPI run: {comm.Get_size()} ranks ({len(topo.groups)} groups of "
              f"{cfg.group_size}), {len(ctx.plan)} nodes, data {cfg.data}, out {cfg.out} "
              f"(setup {time.perf_counter() - t0:.1f} s)", flush=True)
        idle = idle_ranks(topo.host_of_rank, topo.groups)
        if idle:
            print(f"[hbl_mpi] note: ranks {idle} stay idle: rank 0 takes a slot on its host, so "
                  f"its workers do not fill whole groups of {cfg.group_size}", flush=True)
        _log_restart(ctx)
        stats = scheduler_main(ctx, topo, comm, writer, run_info.done)
        try:
            replace_text(os.path.join(cfg.out, "run_stats.json"), json.dumps(stats, indent=1, default=str))
        except WriteFailed as e:  # the results are complete: say so, and end as a failed run
            abort_job(comm, EXIT_FATAL, fatal_line(_write_failed(e, cfg.out, writer), rank=0))
        _summary(ctx, stats, writer.path)
        code = _exit_code(stats)
    elif group is not None:
        worker_main(ctx, topo, comm, group_comm)
        code = 0
    else:
        code = 0  # an idle rank: wait (sleeping) for the end
    _wait_quietly(comm, topo.peer_watch(), worker_fatal=rank == 0)
    return comm.bcast(code, root=0)


def run(args) -> int:
    if args.serial:
        return run_serial_command(args)
    with interrupt.deferred():
        from mpi4py import MPI

    if MPI.COMM_WORLD.Get_size() == 1:
        return run_serial_command(args)
    try:
        return run_mpi(args)
    except KeyboardInterrupt as e:  # outside the scheduler and worker loops (start-up, the end)
        comm = MPI.COMM_WORLD  # every rank got the signal: rank 0 speaks for the job
        if comm.Get_rank() != 0:
            _give_rank0_time()
        abort_job(comm, interrupt.exit_code(e), f"hbl_mpi: {interrupt.what(e)}")


RANK0_GRACE_S = 10.0
"""How long an interrupted rank waits for rank 0 (interrupted too: mpiexec and srun signal
every rank) to say the one line and end the job, before it ends the job itself: rank 0 may
be importing torch (SIGTERM is held until the import ends) or blocked in a collective."""


def _give_rank0_time() -> None:
    deadline = time.monotonic() + RANK0_GRACE_S
    try:
        while time.monotonic() < deadline:
            time.sleep(0.05)  # rank 0's MPI_Abort ends this process here
    except KeyboardInterrupt:  # a second Ctrl-C: end now
        pass
