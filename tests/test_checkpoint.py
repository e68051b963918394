"""Checkpoint store: round trip, keep policy, checksum fallback, crash atomicity, async writer."""

import errno
import json
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest
import torch

from hbl_mpi.checkpoint import (
    WRITE_STEPS,
    AsyncCheckpointWriter,
    CheckpointWriteError,
    CkptParams,
    NodeCheckpoints,
    keep_epochs,
    restart_check,
)
from hbl_mpi.core.config import RunConfig, load_config
from hbl_mpi.core.errors import InputError
from hbl_mpi.train.flat_state import ModelState


def state(seed: int, n: int = 10) -> ModelState:
    g = torch.Generator().manual_seed(seed)
    return ModelState(torch.randn(3 * n, generator=g), n, 100 + seed)


def params(root, **kw) -> CkptParams:
    """The parameters a run with these config keys uses (CkptParams has no defaults of its own)."""
    return CkptParams.from_config(RunConfig(ckpt_directory=str(root), **kw))


def pointer(node_dir, name):
    return os.readlink(node_dir / name)


def test_round_trip_bit_identical(tmp_path):
    random.seed(5)
    np_rng = np.random.default_rng(3)
    torch.manual_seed(9)
    s = state(1, n=1000)
    best = state(2, n=1000)
    bk = {
        "epoch": 4,
        "history": [{"epoch": e, "loss": 1.0 / e, "val_loss": 2.0 / e, "seconds": 0.5} for e in range(1, 5)],
        "best_val": 0.5,
        "best_epoch": 3,
        "patience_left": 1,
        "best_state": best,
        "torch_rng": torch.get_rng_state(),
        "py_rng": random.getstate(),
        "np_rng": np_rng.bit_generator.state,
        "shuffle_order": torch.randperm(50, generator=torch.Generator().manual_seed(1)),
    }
    nc = NodeCheckpoints(tmp_path, "1.3.2", params(tmp_path), {"model": "tiny", "data_checksum": "abc123"})
    info = nc.save(4, s, bk, {"loss": 0.25, "val_loss": 0.5})
    assert info is not None and info["epoch"] == 4 and info["is_best"]

    ck = NodeCheckpoints(tmp_path, "1.3.2", params(tmp_path)).load_last()
    assert ck is not None and ck.epoch == 4 and not ck.fell_back
    assert ck.state.flat.dtype == torch.float32
    assert ck.state.flat.numpy().tobytes() == s.flat.numpy().tobytes()
    assert (ck.state.n_params, ck.state.step) == (s.n_params, s.step)
    assert ck.state.checksum() == s.checksum()
    got = ck.bookkeeping
    assert got["history"] == bk["history"]
    assert (got["epoch"], got["best_val"], got["best_epoch"], got["patience_left"]) == (4, 0.5, 3, 1)
    assert isinstance(got["best_state"], ModelState) and got["best_state"].checksum() == best.checksum()
    assert torch.equal(got["shuffle_order"], bk["shuffle_order"])
    # the RNG states restore the exact streams
    expected = (torch.rand(3), random.random(), np_rng.random())
    torch.set_rng_state(got["torch_rng"])
    random.setstate(got["py_rng"])
    r2 = np.random.default_rng()
    r2.bit_generator.state = got["np_rng"]
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1] and r2.random() == expected[2]

    d = tmp_path / "1.3.2"
    assert pointer(d, "last") == "epochs/004" and pointer(d, "best") == "epochs/004"
    on_disk = json.loads((d / "epochs/004/ckpt-info.json").read_text())
    import hashlib

    assert on_disk["checksum"] == hashlib.sha256((d / "epochs/004/model.pt").read_bytes()).hexdigest()
    assert on_disk["model_file"] == "model.pt" and on_disk["save_best_metric"] == "val_loss"
    assert on_disk["metric_value"] == 0.5 and on_disk["best_metric_last"] == 0.5
    md = {item["attribute"]: item["value"] for item in on_disk["metadata"]}
    assert md["model"] == "tiny" and md["data_checksum"] == "abc123"
    assert (md["node"], md["stage"], md["parent"], md["epoch"]) == ("1.3.2", 2, "1.3", 4)
    assert md["metrics"] == {"loss": 0.25, "val_loss": 0.5}
    assert md["framework"] == "pytorch" and md["framework_version"] == torch.__version__
    assert [k for k in os.listdir(d) if k.startswith(".")] == []


def test_bad_bookkeeping_rejected_before_anything_is_written(tmp_path):
    nc = NodeCheckpoints(tmp_path, "1.1", params(tmp_path))
    with pytest.raises(TypeError, match="numpy"):
        nc.save(1, state(1), {"x": np.zeros(3)}, {"val_loss": 1.0})
    assert nc.epochs() == [] and nc.best_epoch is None


def test_save_schedule_skip_interval_final_best(tmp_path):
    nc = NodeCheckpoints(tmp_path, "1.1", params(tmp_path, ckpt_skip_epochs=3, ckpt_save_interval=4,
                                                   ckpt_keep_limit=100))
    vals = {1: 0.1, 2: 0.9, 3: 0.8, 4: 0.85, 5: 0.7, 6: 0.75, 7: 0.72, 8: 0.71, 9: 0.74}
    written = [e for e, v in vals.items() if nc.save(e, state(e), {}, {"val_loss": v}, final=(e == 9))]
    # 1-2 skipped (even the very good epoch 1); 3 best so far; 4, 8 interval; 5 best; 9 final
    assert written == [3, 4, 5, 8, 9]
    assert nc.best_epoch == 5 and pointer(nc.dir, "best") == "epochs/005"
    assert pointer(nc.dir, "last") == "epochs/009"
    # a final epoch inside the skip window is still written
    nc2 = NodeCheckpoints(tmp_path, "1.2", params(tmp_path, ckpt_skip_epochs=10))
    assert nc2.save(2, state(2), {}, {"val_loss": 1.0}, final=True) is not None
    assert not nc2.wants(3, {"val_loss": 0.1})


def test_keep_policy_linear_on_disk(tmp_path):
    nc = NodeCheckpoints(tmp_path, "1.1", params(tmp_path, ckpt_keep_limit=2))
    for e in range(1, 11):
        nc.save(e, state(e), {}, {"val_loss": 0.3 if e == 2 else 1.0 + e})
    assert nc.epochs() == [2, 8, 9, 10]  # best 2, last 10, the two newest others
    nc0 = NodeCheckpoints(tmp_path, "1.2", params(tmp_path, ckpt_keep_limit=0, ckpt_save_best=False))
    for e in range(1, 6):
        nc0.save(e, state(e), {}, {"val_loss": 1.0})
    assert nc0.epochs() == [5] and not os.path.lexists(nc0.dir / "best")


def test_keep_policy_exponential():
    kept: set[int] = set()
    for e in range(1, 201):
        kept = keep_epochs(kept | {e}, e, None, "exponential", 4)
    assert sorted(kept) == [192, 196, 198, 199, 200]  # distances 8, 4, 2, 1 back from last
    kept = set()
    for e in range(1, 201):
        kept = keep_epochs(kept | {e}, e, 7, "exponential", 6)
    assert sorted(kept) == [7, 160, 176, 192, 196, 198, 199, 200]  # best kept, distances up to 40
    # a stale future (epochs after last) is never kept; linear keeps the newest
    assert keep_epochs({1, 2, 3, 4, 9}, 4, 1, "linear", 1) == {1, 3, 4}


def test_keep_policy_exponential_on_disk(tmp_path):
    nc = NodeCheckpoints(tmp_path, "1.1", params(tmp_path, ckpt_keep_mode="exponential", ckpt_keep_limit=3))
    for e in range(1, 21):
        nc.save(e, state(e), {}, {"val_loss": 0.1 if e == 5 else 1.0})
    # best 5, last 20, one per octave back from 20: 19 (d=1), 18 (d in [2,4)), 16 (d in [4,8))
    assert nc.epochs() == [5, 16, 18, 19, 20]


def corrupt(path):
    b = bytearray(path.read_bytes())
    b[len(b) // 2] ^= 0xFF
    path.write_bytes(bytes(b))


def test_checksum_mismatch_falls_back(tmp_path):
    nc = NodeCheckpoints(tmp_path, "1.4", params(tmp_path, ckpt_keep_limit=5))
    for e in (1, 2, 3):
        nc.save(e, state(e), {"epoch": e}, {"val_loss": 1.0 / e})
    corrupt(nc.epochs_dir / "003" / "model.pt")
    with pytest.warns(RuntimeWarning) as rec:
        ck = nc.load_last()
    assert "checksum mismatch" in str(rec[0].message) and "falling back to epoch 2" in str(rec[1].message)
    assert ck.epoch == 2 and ck.fell_back and ck.state.checksum() == state(2).checksum()
    assert ck.bookkeeping == {"epoch": 2}
    with pytest.warns(RuntimeWarning) as rec:
        assert nc.load_best().epoch == 2
    assert any("`best` (epoch 3) is damaged, falling back to epoch 2" in str(r.message) for r in rec)
    # everything damaged -> None (with warnings), never an exception
    corrupt(nc.epochs_dir / "002" / "model.pt")
    (nc.epochs_dir / "001" / "ckpt-info.json").write_text("{truncated")
    with pytest.warns(RuntimeWarning):
        assert nc.load_last() is None


def test_truncated_model_without_checksum_falls_back(tmp_path):
    nc = NodeCheckpoints(tmp_path, "1.4", params(tmp_path, ckpt_checksum=False))
    for e in (1, 2):
        nc.save(e, state(e), {}, {"val_loss": 1.0})
    assert json.loads((nc.epochs_dir / "002" / "ckpt-info.json").read_text())["checksum"] is None
    m = nc.epochs_dir / "002" / "model.pt"
    m.write_bytes(m.read_bytes()[:100])
    with pytest.warns(RuntimeWarning) as rec:
        assert nc.load_last().epoch == 1
    assert "100 bytes, its ckpt-info.json recorded" in str(rec[0].message)  # the size is checked first
    # read back by a run that has ckpt_checksum on: nothing to verify, structure still checked
    with pytest.warns(RuntimeWarning):
        assert NodeCheckpoints(tmp_path, "1.4", params(tmp_path)).load_last().epoch == 1


def test_missing_history_and_restart_check(tmp_path):
    root = tmp_path / "ckpts"
    assert NodeCheckpoints(root, "1.1", params(root)).load_last() is None
    assert NodeCheckpoints(root, "1.1", params(root)).load_best() is None
    with pytest.raises(InputError, match="required but no checkpoint found in .*does not exist"):
        restart_check(params(root, ckpt_restart_mode="required"))
    assert restart_check(params(root, ckpt_restart_mode="auto")) == {}
    root.mkdir()
    with pytest.raises(InputError, match="ckpt_restart_mode = required but no checkpoint found in"):
        restart_check(params(root, ckpt_restart_mode="required"))
    for node, last in (("1.1", 3), ("1.2.4", 1)):
        nc = NodeCheckpoints(root, node, params(root))
        for e in range(1, last + 1):
            nc.save(e, state(e), {}, {"val_loss": 1.0})
    assert restart_check(params(root, ckpt_restart_mode="required")) == {"1.1": 3, "1.2.4": 1}
    assert restart_check(params(root, ckpt_restart_mode="auto"), root) == {"1.1": 3, "1.2.4": 1}
    assert restart_check(params(root, ckpt_restart_mode="off")) == {}


def test_params_from_config_and_validation(tmp_path):
    cfg = RunConfig(data="x.h5", out=str(tmp_path / "o"), ckpt_keep_mode="exponential", ckpt_keep_limit=5)
    p = CkptParams.from_config(cfg, {"data_checksum": "d1"})
    assert p.ckpt_directory == str(tmp_path / "o" / "ckpts")
    assert p.ckpt_keep_mode == "exponential" and p.ckpt_keep_limit == 5
    assert p.metadata["data_checksum"] == "d1" and p.metadata["model"] == cfg.model
    cfg.ckpt_directory = "/elsewhere"
    assert CkptParams.from_config(cfg).ckpt_directory == "/elsewhere"
    # the config validates the ckpt_* keys, once, with the other keys
    with pytest.raises(InputError, match="ckpt_keep_mode"):
        load_config(None, ["data='x.h5'", "ckpt_keep_mode='fibonacci'"])
    with pytest.raises(InputError, match="ckpt_save_interval"):
        load_config(None, ["data='x.h5'", "ckpt_save_interval=0"])
    assert CkptParams.from_config(RunConfig()).ckpt_enabled is RunConfig().ckpt_enabled


def test_restart_continues_best_tracking_and_clear(tmp_path):
    nc = NodeCheckpoints(tmp_path, "1.1", params(tmp_path))
    nc.save(1, state(1), {}, {"val_loss": 0.5})
    nc.save(2, state(2), {}, {"val_loss": 0.7})
    again = NodeCheckpoints(tmp_path, "1.1", params(tmp_path))
    assert (again.best_epoch, again.best_metric) == (1, 0.5)
    assert again.save(3, state(3), {}, {"val_loss": 0.6})["is_best"] is False
    assert pointer(again.dir, "best") == "epochs/001"
    again.clear()
    assert not again.dir.exists() and again.load_last() is None
    assert again.save(1, state(7), {}, {"val_loss": 0.9})["is_best"] is True


# ----------------------------------------------------------------------------- crash injection

CRASH_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from hbl_mpi.checkpoint import CkptParams, NodeCheckpoints
    from hbl_mpi.core.config import RunConfig
    from hbl_mpi.train.flat_state import ModelState

    def st(seed):
        g = torch.Generator().manual_seed(seed)
        return ModelState(torch.randn(30, generator=g), 10, seed)

    def scenario(root, step, rewrite):
        p = CkptParams.from_config(RunConfig(ckpt_directory=root, ckpt_keep_limit=1))
        nc = NodeCheckpoints(root, "1.2", p)
        for e in (1, 2, 3):
            nc.save(e, st(e), {"epoch": e}, {"val_loss": 1.0 / e})
        if rewrite:  # epoch 3 again (a rerun): the directory `last` points at is replaced
            nc = NodeCheckpoints(root, "1.2", p)
            new_epoch, new_seed = 3, 33
        else:
            new_epoch, new_seed = 4, 4
        def hook(s):
            if s == step:
                os._exit(17)
        nc._step_hook = hook
        nc.save(new_epoch, st(new_seed), {"epoch": new_epoch}, {"val_loss": 0.01}, final=True)
        os._exit(0)

    rcs = {}
    for case in json.loads(sys.argv[1]):
        root, step, rewrite = case
        pid = os.fork()
        if pid == 0:
            try:
                scenario(root, step, rewrite)
            finally:
                os._exit(99)
        rcs[root] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    print(json.dumps(rcs))
    """
)

# step at which the write dies -> does `last` already name the new checkpoint?
CRASH_CASES = [(s, False) for s in WRITE_STEPS] + [(s, True) for s in ("fsynced", "renamed")]
NEW_AFTER = {"last_swapped", "best_swapped", "pruned_one"}


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    base = tmp_path_factory.mktemp("crash")
    cases = [(str(base / f"{s}-{int(r)}"), s, r) for s, r in CRASH_CASES]
    out = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, json.dumps(cases)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return base, json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(150)
@pytest.mark.parametrize("step,rewrite", CRASH_CASES)
def test_crash_at_any_step_leaves_last_complete(crashed, step, rewrite):
    base, rcs = crashed
    root = base / f"{step}-{int(rewrite)}"
    assert rcs[str(root)] == 17, "the crash hook did not fire"
    p = params(root, ckpt_keep_limit=1)
    nc = NodeCheckpoints(root, "1.2", p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the pointed checkpoint itself must verify
        ck = nc.load_last()
    g = torch.Generator()
    if rewrite:
        new = step == "renamed"  # the epoch directory was swapped in place, atomically
        exp_epoch, exp_seed = 3, (33 if new else 3)
    else:
        new = step in NEW_AFTER
        exp_epoch, exp_seed = (4, 4) if new else (3, 3)
    expected = torch.randn(30, generator=g.manual_seed(exp_seed))
    assert ck.epoch == exp_epoch and ck.bookkeeping == {"epoch": exp_epoch}
    assert torch.equal(ck.state.flat, expected) and ck.state.step == exp_seed
    # the next writer cleans up and goes on; `best` is repaired if the crash left it stale
    nxt = ck.epoch + 1  # resume: the next epoch (rewrites an orphan left by the crash, if any)
    nc.save(nxt, ModelState(torch.zeros(30), 10, nxt), {"epoch": nxt}, {"val_loss": 5.0}, final=True)
    assert not [n for n in os.listdir(nc.dir) if n.startswith(".")]
    assert os.readlink(nc.dir / "last") == f"epochs/{nxt:03d}"
    assert nc.load_last().bookkeeping == {"epoch": nxt}
    assert os.readlink(nc.dir / "best") == f"epochs/{exp_epoch:03d}"
    best = nc.load_best()
    assert best.epoch == exp_epoch and torch.equal(best.state.flat, expected)


# ----------------------------------------------------------------------------- async writer


@pytest.mark.timeout(30)
def test_async_submit_overlaps_slow_write(tmp_path):
    """submit returns while the write is still held inside the writer thread (events, not sleeps:
    the write cannot finish before the test lets it)."""
    nc = NodeCheckpoints(tmp_path, "1.1", params(tmp_path))
    writing, release = threading.Event(), threading.Event()

    def hold(step):
        if step == "model_written":
            writing.set()
            assert release.wait(20), "the test never released the write"

    nc._step_hook = hold
    with AsyncCheckpointWriter() as w:
        plan = w.submit(nc, 1, state(1), {"epoch": 1}, {"val_loss": 1.0})
        assert plan is not None and plan.epoch == 1  # returned: the write has not finished
        assert writing.wait(20), "the writer thread never started the write"
        # the caller keeps working while the write waits in the writer thread
        assert w.pending == 1 and not os.path.lexists(nc.dir / "last")
        release.set()
        w.flush()
        assert os.readlink(nc.dir / "last") == "epochs/001"
        # an epoch the policy does not want is not queued
        nc._step_hook = None
        nc2 = NodeCheckpoints(tmp_path, "1.2", params(tmp_path, ckpt_skip_epochs=5))
        assert w.submit(nc2, 1, state(1), {}, {"val_loss": 1.0}) is None
    assert len(w.written) == 1 and w.written[0]["epoch"] == 1


@pytest.mark.timeout(30)
def test_async_errors_are_reported(tmp_path):
    nc = NodeCheckpoints(tmp_path, "1.1", params(tmp_path))
    w = AsyncCheckpointWriter()
    w.submit(nc, 1, state(1), {}, {"val_loss": 1.0})
    w.flush()

    def fail(step):
        if step == "fsynced":
            raise OSError(28, "No space left on device")

    nc._step_hook = fail
    w.submit(nc, 2, state(2), {}, {"val_loss": 0.5})
    with pytest.raises(CheckpointWriteError, match="node 1.1 epoch 2: OSError.*No space left"):
        w.flush()
    assert os.readlink(nc.dir / "last") == "epochs/001"  # the failed write left nothing pointed at
    w.submit(nc, 3, state(3), {}, {"val_loss": 0.4})  # error consumed; this one fails too
    deadline = time.time() + 10
    while w.pending and time.time() < deadline:
        time.sleep(0.01)
    with pytest.raises(CheckpointWriteError, match="epoch 3"):
        w.submit(nc, 4, state(4), {}, {"val_loss": 0.3})  # reported on the next submit
    nc._step_hook = None
    w.submit(nc, 5, state(5), {}, {"val_loss": 0.2})
    w.close()
    assert os.readlink(nc.dir / "last") == "epochs/005"
    with pytest.raises(RuntimeError, match="closed"):
        w.submit(nc, 6, state(6), {}, {"val_loss": 0.1})


@pytest.mark.timeout(60)
def test_async_writer_drains_queue_at_interpreter_exit(tmp_path):
    """A script that forgets close(): the non-daemon writer still finishes queued writes."""
    script = textwrap.dedent(
        """
        import sys, time, torch
        from hbl_mpi.checkpoint import AsyncCheckpointWriter, CkptParams, NodeCheckpoints
        from hbl_mpi.core.config import RunConfig
        from hbl_mpi.train.flat_state import ModelState
        root = sys.argv[1]
        nc = NodeCheckpoints(root, "1.1", CkptParams.from_config(RunConfig(ckpt_directory=root)))
        nc._step_hook = lambda s: time.sleep(0.3) if s == "model_written" else None
        w = AsyncCheckpointWriter(poll_seconds=0.1)
        for e in (1, 2):
            w.submit(nc, e, ModelState(torch.full((3,), float(e)), 1, e), {}, {"val_loss": 1.0 / e})
        """
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stderr
    ck = NodeCheckpoints(tmp_path, "1.1", params(tmp_path)).load_last()
    assert ck.epoch == 2 and torch.equal(ck.state.flat, torch.full((3,), 2.0))


# ----------------------------------------------------------------------------- full disk


def _disk_full(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["model", "fsync", "info", "silent"])
def test_full_disk_keeps_last_on_the_previous_verified_checkpoint(tmp_path, monkeypatch, where):
    """A full disk while writing epoch 2: the write fails, nothing of it is left, and `last`
    still names epoch 1, which verifies. ``silent``: a file system that reports success
    but stored a short file (quota on NFS); the read-back check catches it."""
    from hbl_mpi.checkpoint import format as ckfmt
    from hbl_mpi.checkpoint import store as ckstore

    nc = NodeCheckpoints(tmp_path, "1.1", params(tmp_path, ckpt_keep_limit=0, ckpt_save_best=False))
    nc.save(1, state(1), {"epoch": 1}, {"val_loss": 1.0})
    real_write = ckfmt.HashingWriter.write
    if where == "model":  # ENOSPC part-way through model.pt
        def write(self, b):
            if self.n > 200:
                _disk_full()
            return real_write(self, b)
        monkeypatch.setattr(ckfmt.HashingWriter, "write", write)
    elif where == "fsync":  # ENOSPC reported at fsync (NFS, delayed allocation)
        monkeypatch.setattr(os, "fsync", _disk_full)
    elif where == "info":  # model.pt fits, ckpt-info.json does not
        monkeypatch.setattr(ckstore, "replace_text", _disk_full)
    else:  # the bytes are hashed as written, but only half of them reach the file
        def write(self, b):
            if self.h is not None:
                self.h.update(b)
            self.n += len(b)
            return self.f.write(b[: len(b) // 2]) and len(b)
        monkeypatch.setattr(ckfmt.HashingWriter, "write", write)
    w = AsyncCheckpointWriter()
    w.submit(nc, 2, state(2), {"epoch": 2}, {"val_loss": 0.5})
    with pytest.raises(CheckpointWriteError) as err:
        w.flush()
    monkeypatch.undo()
    w.close()
    if where != "silent":
        assert err.value.disk_full and "disk full" in str(err.value)
    assert pointer(nc.dir, "last") == "epochs/001"
    assert [e.name for e in os.scandir(nc.dir) if e.name.startswith(".")] == []  # no temporary left
    assert nc.epochs() == [1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # epoch 1 itself verifies: no fallback
        ck = NodeCheckpoints(tmp_path, "1.1", params(tmp_path)).load_last()
    assert ck.epoch == 1 and ck.state.checksum() == state(1).checksum()
    # once there is room again, the next write succeeds
    nc.save(2, state(2), {"epoch": 2}, {"val_loss": 0.5})
    assert pointer(nc.dir, "last") == "epochs/002"
