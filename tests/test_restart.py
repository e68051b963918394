"""``run --restart``: killed runs continue from results.h5 and the epoch checkpoints.

The yardstick is always the uninterrupted run: after any interruption and restart the
node table must hold every node exactly once, with the same losses bit for bit (CPU,
one thread per rank: the trainer seeds every epoch from (seed, node, epoch), so a node
resumed at an epoch boundary continues exactly as if never stopped).

Interruptions: ``kill -9`` of the whole ``mpiexec`` process group at seeded random
times (real, timing-dependent), a SIGKILL at a chosen epoch of the serial driver (a
subprocess), and cheap in-process interruptions (an exception that escapes the driver
like a kill: nothing flushed) to cover the checkpoint variants. Every launch runs under
a timeout.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pandas as pd
import pytest

from hbl_mpi.__main__ import main
from mpiutil import mpi_env, mpiexec, run_py
from compare import assert_same_nodes
from tinyrun import write_3x2_run

NODES = [f"1.{a}" for a in (1, 2, 3)] + [f"1.{a}.{b}" for a in (1, 2, 3) for b in (1, 2, 3)]

SLOW = f"fault_slow_nodes = {NODES!r}\nfault_slow_seconds = {{slow}}\n".replace("'", '"')


class Killed(BaseException):
    """Escapes the driver's per-node error handling, like a kill: nothing more is flushed."""


@pytest.fixture(scope="module")
def setup(reference_3x2):
    """(the shared 3 x 2 run's folder: read-only, tests copy from it; its config; its
    serial node table). The finished serial run is ``root / "serial"``."""
    assert sorted(reference_3x2.nodes.index) == sorted(NODES)
    return reference_3x2.root, reference_3x2.cfg, reference_3x2.nodes


def compare(reference: pd.DataFrame, out) -> pd.DataFrame:
    """The restarted run's table equals the uninterrupted one; returns it (indexed by node)."""
    nodes = pd.read_hdf(os.path.join(out, "results.h5"), "nodes")
    assert nodes["node"].is_unique, nodes["node"].tolist()  # every node exactly once
    nodes = assert_same_nodes(reference, nodes.set_index("node"), extra=("best_epoch", "stopped_early"))
    assert (nodes["status"] == "done").all()
    history = pd.read_hdf(os.path.join(out, "results.h5"), "history")
    assert not history.duplicated(["node", "epoch"]).any()
    assert len(history) == int(reference["epochs_run"].sum())
    cell_val = pd.read_hdf(os.path.join(out, "results.h5"), "cell_val")
    assert not cell_val.duplicated(["node", "cell"]).any()
    return nodes


def interrupted_run(cfg, out, target: tuple[str, int], extra=(), restart=False):
    """Run in-process and stop dead right after ``target`` = (node, epoch) was checkpointed."""
    from hbl_mpi.checkpoint import session

    original = session.NodeSession.on_epoch

    def on_epoch(self, ev):
        original(self, ev)
        if (ev.node, ev.epoch) == target:
            self.owner.writer.flush()
            raise Killed(target)

    session.NodeSession.on_epoch = on_epoch
    try:
        with pytest.raises(Killed):
            main(["run", str(cfg), "--serial", "--out", str(out), "--set", "ckpt_enabled=true", *extra,
                  *(["--restart"] if restart else [])])
    finally:
        session.NodeSession.on_epoch = original


# --------------------------------------------------------------------------- MPI


def _newest_checkpoint(out) -> float:
    newest = 0.0
    for dirpath, _, files in os.walk(os.path.join(out, "ckpts")):
        if "ckpt-info.json" in files:
            try:
                newest = max(newest, os.stat(os.path.join(dirpath, "ckpt-info.json")).st_mtime)
            except FileNotFoundError:  # pruned meanwhile
                pass
    return newest


def _launch(cmd, env, out):
    """Start ``cmd`` in its own process group; returns (proc, output lines, training-started event).

    Training has started when a checkpoint newer than the launch appears (the ranks take
    seconds to import and build their model first; a kill then tests little).
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)  # its own process group: kill -9 takes every rank
    t0 = time.time()
    lines: list[str] = []
    started = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)

    def watch():
        while proc.poll() is None and not started.is_set():
            if _newest_checkpoint(out) > t0:
                break
            time.sleep(0.02)
        started.set()

    threading.Thread(target=read, daemon=True).start()
    threading.Thread(target=watch, daemon=True).start()
    return proc, lines, started


@pytest.mark.slow  # default tier: the serial SIGKILL mid-node and interrupted-restart variants below
@pytest.mark.timeout(240)
def test_kill9_mpiexec_at_random_times_then_restart(setup, tmp_path):
    root, cfg, reference = setup
    slow_cfg = tmp_path / "slow.toml"
    slow_cfg.write_text(cfg.read_text() + "ckpt_enabled = true\n" + SLOW.format(slow=0.2))
    out = tmp_path / "out"
    rng = random.Random(20240611)
    base = [mpiexec(), "-n", "3", sys.executable, "-m", "hbl_mpi", "run", str(slow_cfg), "--out", str(out)]
    env = mpi_env()
    kills = []
    for attempt in range(3):
        cmd = base + (["--restart"] if attempt else [])
        proc, lines, started = _launch(cmd, env, out)
        try:
            assert started.wait(120), "run did not start"
            delay = rng.uniform(0.0, 2.0)
            time.sleep(delay)
            finished = proc.poll() is not None
            if not finished:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
            assert finished or proc.returncode == -signal.SIGKILL, "".join(lines)[-3000:]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        assert not finished or proc.returncode == 0, "".join(lines)[-3000:]
        restart_line = [ln for ln in lines if "restart:" in ln]
        kills.append((round(delay, 2), finished, restart_line[0].strip() if restart_line else ""))
    proc = subprocess.run(base + ["--restart"], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "restart:" in proc.stdout
    print(kills, [ln for ln in proc.stdout.splitlines() if "restart:" in ln or "resuming" in ln])
    nodes = compare(reference, out)
    # at least one kill hit a live run (not one that had already finished)
    assert not all(k[1] for k in kills), kills


# --------------------------------------------------------------------------- serial


KILLER = textwrap.dedent("""
    import os, signal, sys
    from hbl_mpi.checkpoint import session
    original = session.NodeSession.on_epoch
    target = (sys.argv[1], int(sys.argv[2]))

    def on_epoch(self, ev):
        original(self, ev)
        if (ev.node, ev.epoch) == target:
            self.owner.writer.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    session.NodeSession.on_epoch = on_epoch
    from hbl_mpi.__main__ import main
    sys.exit(main(sys.argv[3:]))
""")


@pytest.mark.timeout(120)
def test_serial_sigkill_mid_node_resumes_from_its_last_epoch(setup, tmp_path):
    root, cfg, reference = setup
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", KILLER, "1.2", "2", "run", str(cfg), "--serial", "--out",
                           str(out), "--set", "ckpt_enabled=true"],
                          capture_output=True, text=True, timeout=100, env=mpi_env())
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert os.readlink(out / "ckpts" / "1.2" / "last") == "epochs/002"
    assert main(["run", str(cfg), "--serial", "--out", str(out), "--restart",
                 "--set", "ckpt_enabled=true"]) == 0
    nodes = compare(reference, out)
    assert nodes.loc["1.2", "resumed_from"] == 2
    assert (nodes.loc[["1.3", "1.2.1"], "resumed_from"] == 0).all()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("variant", [
    ("1.3", 2, ()),  # best kept by reference (the store's `best` is the trainer's)
    ("1.2", 2, ("--set", "ckpt_save_best=false", "--set", "ckpt_keep_limit=0")),  # best inline
    ("1.1", 2, ("--set", "inherit='last'", "--set", "ckpt_save_interval=2")),
])
def test_interrupted_serial_restart_variants(setup, tmp_path, variant, capsys):
    root, cfg, reference = setup
    node, epoch, extra = variant
    if "inherit='last'" in extra:  # another tree: its own reference
        ref_out = tmp_path / "ref"
        assert main(["run", str(cfg), "--serial", "--out", str(ref_out), *extra]) == 0
        reference = pd.read_hdf(ref_out / "results.h5", "nodes").set_index("node")
    out = tmp_path / "out"
    interrupted_run(cfg, out, (node, epoch), extra)
    # a second interruption, during the restart, in a node that had not started
    second = "1.3.1" if node != "1.3" else "1.3.2"
    interrupted_run(cfg, out, (second, 1), extra, restart=True)
    capsys.readouterr()
    assert main(["run", str(cfg), "--serial", "--out", str(out), "--restart", "--set", "ckpt_enabled=true",
                 *extra]) == 0
    log = capsys.readouterr().out
    assert "restart:" in log
    nodes = compare(reference, out)
    # each interrupted node continued from a checkpoint, not from the start: the second from
    # its epoch 1; the first from its epoch `epoch` in the second launch, or, when that
    # launch was killed before its row reached results.h5, from a later one in the third
    resumed = nodes["resumed_from"].to_dict()
    assert nodes.loc[second, "resumed_from"] == 1, resumed
    assert nodes.loc[node, "resumed_from"] >= epoch, resumed


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name, plant", [("model.pt", "fifo"), ("ckpt-info.json", "dev_zero")])
def test_planted_checkpoint_file_of_an_unfinished_node_does_not_hang(setup, tmp_path, name, plant):
    """Issue 28 item 3: the newest checkpoint of an interrupted node replaced by a FIFO (a
    reader blocks) or a link to /dev/zero (a reader never ends). The restart sees a damaged
    checkpoint, says so, resumes from the older one, and ends with the uninterrupted table;
    before any node finishes the stall rule could not have caught the hang."""
    root, cfg, reference = setup
    out = tmp_path / "out"
    interrupted_run(cfg, out, ("1.2", 2))
    target = out / "ckpts" / "1.2" / "epochs" / "002" / name
    target.unlink()
    os.mkfifo(target) if plant == "fifo" else os.symlink("/dev/zero", target)
    t0 = time.monotonic()
    with pytest.warns(RuntimeWarning, match=f"checkpoint 1.2 epoch 2 is damaged.*{name}"):
        assert main(["run", str(cfg), "--serial", "--out", str(out), "--restart", "--set", "ckpt_enabled=true"]) == 0
    nodes = compare(reference, out)
    assert nodes.loc["1.2", "resumed_from"] == 1  # the older checkpoint, verified
    assert time.monotonic() - t0 < 60
    if os.path.lexists(target):  # epoch 2 rewritten (or pruned), never read through
        assert stat.S_ISREG(os.lstat(target).st_mode)


@pytest.mark.timeout(120)
def test_finished_parent_state_from_checkpoint_or_rerun(setup, tmp_path, capsys):
    """Finished parents with unfinished children: their checkpoint if final, else they rerun."""
    root, cfg, reference = setup
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--serial", "--out", str(out), "--set", "ckpt_enabled=true"]) == 0
    full = pd.read_hdf(out / "results.h5", "nodes")
    # pretend the run died after these nodes: cut the rest out of results.h5
    from hbl_mpi.store.results import read_results

    keep = {"1.1", "1.1.1", "1.2", "1.3", "1.3.2"}
    prev = read_results(str(out / "results.h5"))
    _rewrite_results(out, prev, keep)
    shutil.rmtree(out / "ckpts" / "1.3")  # 1.3's state is lost: it must run again
    for n in set(NODES) - keep - {"1.1.2"}:
        shutil.rmtree(out / "ckpts" / n)  # unfinished nodes without checkpoints start over
    capsys.readouterr()
    assert main(["run", str(cfg), "--serial", "--out", str(out), "--restart", "--set", "ckpt_enabled=true"]) == 0
    log = capsys.readouterr().out
    assert "1 finished nodes run again" in log and ": 1.3" in log
    nodes = compare(reference, out)
    assert nodes.loc["1.1.2", "source"] == "checkpoint" and nodes.loc["1.2.1", "source"] == "checkpoint"
    assert nodes.loc["1.1.2", "resumed_from"] == 1  # its final checkpoint: evaluated, not retrained
    assert nodes.loc["1.3", "source"] == "fresh" and nodes.loc["1.3.1", "source"] == "local"
    assert set(full["node"]) == set(nodes.index)


def _rewrite_results(out, prev, keep):
    from hbl_mpi.store.results import ResultsWriter

    cut = prev.without(set(prev.nodes["node"]) - set(keep))
    w = ResultsWriter(str(out / "results.h5"), config=prev.config, versions={}, data_checksum="",
                      plan_frame=pd.read_hdf(out / "results.h5", "plan"), truth=None, previous=cut)
    w.flush()


@pytest.mark.timeout(120)
def test_restart_without_checkpoints_reruns_needed_parents(setup, tmp_path, capsys):
    """No checkpoints: finished nodes whose state an unfinished child needs run again."""
    root, cfg, reference = setup
    out = tmp_path / "out"
    shutil.copytree(root / "serial", out)
    from hbl_mpi.store.results import read_results

    _rewrite_results(out, read_results(str(out / "results.h5")), {"1.1", "1.1.1", "1.1.2", "1.1.3", "1.2"})
    capsys.readouterr()
    assert main(["run", str(cfg), "--serial", "--out", str(out), "--restart"]) == 0
    log = capsys.readouterr().out
    assert "restart: 4 of 12 nodes finished before and skipped" in log
    assert "1 finished nodes run again" in log and "no usable final checkpoint" in log
    nodes = compare(reference, out)
    assert nodes.loc["1.2", "source"] == "fresh"


@pytest.mark.timeout(180)
def test_damaged_final_checkpoint_of_a_finished_parent_reruns_it(setup, tmp_path, capsys):
    """A truncated model.pt of a finished parent's final checkpoint: the restart verifies it,
    trains the parent again (from its last good epoch) and finishes the tree bit for bit,
    instead of failing the parent's children on every restart."""
    root, cfg, reference = setup
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--serial", "--out", str(out), "--set", "ckpt_enabled=true"]) == 0
    from hbl_mpi.store.results import read_results

    _rewrite_results(out, read_results(str(out / "results.h5")), {"1.1", "1.2", "1.3"})
    for n in [n for n in NODES if n.count(".") == 2]:
        shutil.rmtree(out / "ckpts" / n)  # the children never ran
    final = out / "ckpts" / "1.1" / "last" / "model.pt"
    data = final.read_bytes()
    final.write_bytes(data[: len(data) // 2])  # truncated
    capsys.readouterr()
    with pytest.warns(RuntimeWarning, match="damaged"):
        code = main(["run", str(cfg), "--serial", "--out", str(out), "--restart", "--set", "ckpt_enabled=true"])
    log = capsys.readouterr().out
    assert code == 0, log
    assert "1 finished nodes run again" in log and ": 1.1" in log and "damaged" in log
    nodes = compare(reference, out)
    assert nodes.loc["1.2.1", "source"] == "checkpoint" and nodes.loc["1.1.1", "source"] == "local"
    # and a second restart finds nothing to do
    assert main(["run", str(cfg), "--serial", "--out", str(out), "--restart", "--set", "ckpt_enabled=true"]) == 0
    assert "12 of 12 nodes finished before" in capsys.readouterr().out


@pytest.mark.timeout(120)
def test_restart_compares_the_data_by_content(setup, tmp_path, capsys, monkeypatch):
    """The same data under another spelling (./d.h5, an absolute path, a moved config) is
    accepted; other data under the same path is refused with one line, exit 2."""
    root, cfg, _ = setup
    from hbl_mpi.data import synthesize, write_uno

    work = tmp_path / "work"
    (work / "cfgs").mkdir(parents=True)
    shutil.copy(root / "tiny.h5", work / "d.h5")
    text = cfg.read_text().replace(f'data = "{root / "tiny.h5"}"', 'data = "../d.h5"')
    assert 'data = "../d.h5"' in text
    (work / "cfgs" / "run.toml").write_text(text)
    out = tmp_path / "out"
    shutil.copytree(root / "serial", out)  # a finished run (made with the absolute path)
    monkeypatch.chdir(work)
    for spelling in (["cfgs/run.toml"], ["cfgs/run.toml", "--set", "data='./d.h5'"],
                     ["cfgs/run.toml", "--set", f"data='{work / 'd.h5'}'"]):
        capsys.readouterr()
        assert main(["run", *spelling, "--serial", "--out", str(out), "--restart"]) == 0, capsys.readouterr().err
        assert "12 of 12 nodes finished before" in capsys.readouterr().out
    shutil.move(str(work / "cfgs"), str(work / "moved"))  # the config moved, the data did not
    (work / "moved" / "run.toml").write_text(text.replace('"../d.h5"', f'"{work / "d.h5"}"'))
    assert main(["run", "moved/run.toml", "--serial", "--out", str(out), "--restart"]) == 0
    # same path, other content: refused before anything is written
    write_uno(synthesize("small", seed=4, cells=36, drugs=10), str(work / "d.h5"))
    before = os.stat(out / "results.h5").st_mtime_ns
    capsys.readouterr()
    assert main(["run", "moved/run.toml", "--serial", "--out", str(out), "--restart"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hbl_mpi: error: --restart: data") and "other data" in err, err
    assert os.stat(out / "results.h5").st_mtime_ns == before


# --------------------------------------------------------------------------- bad input


@pytest.mark.timeout(60)
def test_required_without_checkpoint_exits_2(setup, tmp_path, capsys):
    root, cfg, _ = setup
    out = tmp_path / "out"
    shutil.copytree(root / "serial", out)  # results but no checkpoints
    before = os.stat(out / "results.h5").st_mtime_ns
    capsys.readouterr()
    code = main(["run", str(cfg), "--serial", "--out", str(out), "--restart",
                 "--set", "ckpt_restart_mode='required'"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("hbl_mpi: error: ckpt_restart_mode = required but no checkpoint")
    assert os.stat(out / "results.h5").st_mtime_ns == before  # nothing touched
    assert main(["run", str(cfg), "--serial", "--out", str(tmp_path / "new"),
                 "--set", "ckpt_restart_mode='required'"]) == 2
    assert "add --restart" in capsys.readouterr().err
    # checkpoints, but of a run with other settings: required still refuses
    other = tmp_path / "other"
    assert main(["run", str(cfg), "--serial", "--out", str(other), "--set", "ckpt_enabled=true",
                 "--set", "learning_rate=0.01"]) == 0
    os.remove(other / "results.h5")
    capsys.readouterr()
    assert main(["run", str(cfg), "--serial", "--out", str(other), "--restart",
                 "--set", "ckpt_restart_mode='required'"]) == 2
    assert "made by a run with other settings or data" in capsys.readouterr().err
    assert main(["run", str(cfg), "--serial", "--out", str(out), "--restart", "--overwrite"]) == 2
    assert main(["run", str(cfg), "--serial", "--out", str(out), "--restart",
                 "--set", "learning_rate=0.01"]) == 2
    assert "learning_rate" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


@pytest.mark.timeout(120)
def test_required_under_mpi_exits_2_on_every_rank(setup, tmp_path):
    root, cfg, _ = setup
    proc = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-m", "hbl_mpi", "run", str(cfg), "--out",
                           str(tmp_path / "none"), "--restart", "--set", "ckpt_restart_mode='required'"],
                          capture_output=True, text=True, timeout=100, env=mpi_env())
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("hbl_mpi: error:")]
    assert len(lines) == 1 and "no checkpoint found" in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.timeout(120)
def test_overwrite_removes_the_replaced_runs_checkpoints(tmp_path):
    """--overwrite replaces OUT's run and its checkpoints: a later --restart must not find
    the old run's checkpoints in OUT/ckpts and take them for the new run's."""
    from faultutil import run_cmd, write_config

    cfg = write_config(tmp_path)
    out = tmp_path / "out"
    first = run_py(run_cmd(cfg, out, "--serial"), timeout=100)
    assert first.returncode == 0, first.stderr[-2000:]
    stale = out / "ckpts" / "stale-from-the-replaced-run"
    stale.mkdir(parents=True)
    again = run_py(run_cmd(cfg, out, "--serial", "--overwrite"), timeout=100)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "removed the replaced run's checkpoints" in again.stdout
    assert not stale.exists()
    assert any((out / "ckpts").iterdir())  # the new run's own checkpoints


def test_a_new_training_key_at_its_default_keeps_old_fingerprints_and_a_changed_one_is_refused(tmp_path, capsys):
    """``batch_order`` came after runs were fingerprinted: at its default the fingerprint is
    the one the code before it gave (old checkpoints stay usable); set, it changes the
    fingerprint, and a restart with another value is refused (exit 2) — also for a run made
    before the key existed, which ran at its default."""
    from types import SimpleNamespace

    from hbl_mpi.checkpoint.restart import check_compatible, run_fingerprint
    from hbl_mpi.core.config import RunConfig
    from hbl_mpi.core.errors import InputError

    cfg = RunConfig(data="x.h5")
    assert run_fingerprint(cfg, "abc") == "b43c15eec2190ec0"  # the value at da8b171, before batch_order
    family = RunConfig(data="x.h5", batch_order="family")
    assert run_fingerprint(family, "abc") != run_fingerprint(cfg, "abc")
    older = SimpleNamespace(config={k: v for k, v in cfg.as_dict().items() if k != "batch_order"},
                            data_checksum="abc")
    check_compatible(older, cfg, "abc")  # the same run continues
    with pytest.raises(InputError, match="'batch_order' was 'node'"):
        check_compatible(older, family, "abc")

    run = write_3x2_run(tmp_path)
    out = tmp_path / "out"
    assert main(["run", str(run), "--serial", "--out", str(out), "--set", "s=1"]) == 0
    capsys.readouterr()
    assert main(["run", str(run), "--serial", "--out", str(out), "--set", "s=1", "--set", "batch_order=family",
                 "--restart"]) == 2
    assert "'batch_order' was 'node'" in capsys.readouterr().err
