"""The helpers behind issue 28's rules, without a run: ``core/safe_open`` (a file in OUT or
ckpts is a regular file, opened without following a link or blocking on a FIFO),
``core/output_guard`` (no output is an input or inside a live run's OUT), the checkpoint
store's directories, and ``core/interrupt`` (SIGTERM held across an import)."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from hbl_mpi.checkpoint import CkptParams, NodeCheckpoints
from hbl_mpi.core import interrupt
from hbl_mpi.core.config import RunConfig
from hbl_mpi.core.errors import InputError
from hbl_mpi.core.output_guard import check_outputs, locked_ancestor
from hbl_mpi.core.safe_open import UnsafeFile, check_own_dir, open_regular, read_regular
from hbl_mpi.store.outlock import acquire
from hbl_mpi.train.flat_state import ModelState


@pytest.mark.timeout(10)
def test_open_regular_refuses_fifo_link_and_device_at_once(tmp_path):
    os.mkfifo(tmp_path / "fifo")  # open(2) for reading would block here until a writer came
    os.symlink("/dev/zero", tmp_path / "zero")
    os.symlink(tmp_path / "real", tmp_path / "link")
    (tmp_path / "real").write_bytes(b"x" * 10)
    t0 = time.monotonic()
    with pytest.raises(UnsafeFile, match="is a FIFO, not a regular file"):
        open_regular(tmp_path / "fifo")
    with pytest.raises(UnsafeFile, match="is a FIFO"):  # write-only: ENXIO without a reader
        open_regular(tmp_path / "fifo", os.O_WRONLY)
    with pytest.raises(UnsafeFile, match="symlink"):
        open_regular(tmp_path / "zero")
    with pytest.raises(UnsafeFile, match="symlink"):
        open_regular(tmp_path / "link")
    with pytest.raises(UnsafeFile, match="character device"):
        open_regular("/dev/zero")
    with pytest.raises(UnsafeFile, match="10 bytes long, more than the 4"):
        read_regular(tmp_path / "real", 4)
    assert read_regular(tmp_path / "real", 10) == b"x" * 10
    assert time.monotonic() - t0 < 2


def test_check_own_dir(tmp_path):
    (tmp_path / "d").mkdir()
    os.symlink(tmp_path / "d", tmp_path / "l")
    check_own_dir(tmp_path / "d")
    check_own_dir(tmp_path / "absent")
    with pytest.raises(UnsafeFile, match="a symlink, not a directory hbl_mpi created"):
        check_own_dir(tmp_path / "l")


def test_check_outputs_paths_links_and_locks(tmp_path):
    data = tmp_path / "d.h5"
    data.write_bytes(b"data")
    (tmp_path / "sub").mkdir()
    check_outputs([tmp_path / "new.h5"], [data])  # a new file: fine
    with pytest.raises(InputError, match="is the input"):
        check_outputs([tmp_path / "sub" / ".." / "d.h5"], [data])
    os.symlink(data, tmp_path / "sym.h5")
    with pytest.raises(InputError, match="is the input"):
        check_outputs([tmp_path / "sym.h5"], [data])
    os.link(data, tmp_path / "hard.h5")
    with pytest.raises(InputError, match="a hard link"):
        check_outputs([tmp_path / "hard.h5"], [data])
    out = tmp_path / "OUT"
    lock = acquire(str(out))
    try:
        assert locked_ancestor(str(out / "deep" / "er" / "x.csv"))[0] == str(out)
        with pytest.raises(InputError, match=f"inside '{out}', the output directory of a live run .run pid {os.getpid()}"):
            check_outputs([out / "deep" / "x.csv"], [])
    finally:
        lock.release()
    check_outputs([out / "deep" / "x.csv"], [])  # the run ended: its OUT is free again
    os.mkfifo(tmp_path / "sub" / ".lock")  # a FIFO named .lock is no lock, and must not block
    check_outputs([tmp_path / "sub" / "x"], [])


def _params(root) -> CkptParams:
    return CkptParams.from_config(RunConfig(ckpt_directory=str(root)))


def _state() -> ModelState:
    return ModelState(torch.zeros(30), 10, 1)


def test_checkpoints_never_written_through_a_planted_epochs_link(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "ckpts" / "1.1").mkdir(parents=True)
    os.symlink(elsewhere, tmp_path / "ckpts" / "1.1" / "epochs")
    store = NodeCheckpoints(tmp_path / "ckpts", "1.1", _params(tmp_path / "ckpts"))
    with pytest.raises(UnsafeFile, match="epochs is a symlink"):
        store.save(1, _state(), {}, {"val_loss": 1.0})
    assert os.listdir(elsewhere) == []


def test_clear_of_a_linked_node_folder_touches_nothing_outside(tmp_path):
    target = tmp_path / "target" / "1.1"
    (target / "epochs" / "001").mkdir(parents=True)
    (target / "epochs" / "001" / "model.pt").write_bytes(b"not ours")
    (tmp_path / "ckpts").mkdir()
    os.symlink(target, tmp_path / "ckpts" / "1.1")
    store = NodeCheckpoints(tmp_path / "ckpts", "1.1", _params(tmp_path / "ckpts"))
    store.clear()  # a fresh start of the node
    assert (target / "epochs" / "001" / "model.pt").read_bytes() == b"not ours"
    assert os.listdir(tmp_path / "ckpts") == []  # the link itself is gone, renamed aside and removed


def test_sigterm_is_held_across_a_deferred_block():
    previous = interrupt.install()
    try:
        with pytest.raises(interrupt.Terminated):
            with interrupt.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # the handler has run by now: it only noted the signal
                reached = True
        assert reached
        assert interrupt.exit_code(interrupt.Terminated()) == 143 and interrupt.exit_code(KeyboardInterrupt()) == 130
    finally:
        interrupt.restore(previous)
