"""hbl_mpi.core.atomic: the one atomic-write helper (no symlink followed, old file kept on failure)."""

from __future__ import annotations

import errno
import os

import pytest

from hbl_mpi.core.atomic import WriteFailed, is_disk_full, replace_bytes, replace_file


def test_replaces_content_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")
    replace_bytes(str(p), b"new")
    assert p.read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["f.txt"]
    assert oct(p.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode


def test_symlink_at_target_is_replaced_not_followed(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    inside = tmp_path / "out"
    inside.mkdir()
    (inside / "run_stats.json").symlink_to(outside)
    replace_bytes(str(inside / "run_stats.json"), b"{}")
    assert outside.read_text() == "precious"
    assert not (inside / "run_stats.json").is_symlink()
    assert (inside / "run_stats.json").read_text() == "{}"


def test_dangling_symlink_at_old_tmp_name_is_not_written_through(tmp_path):
    target = tmp_path / "elsewhere.h5"
    (tmp_path / "results.h5.tmp").symlink_to(target)
    replace_bytes(str(tmp_path / "results.h5"), b"x")
    assert not target.exists()
    assert (tmp_path / "results.h5").read_bytes() == b"x"


def test_failed_verify_keeps_the_previous_file(tmp_path):
    p = tmp_path / "r.h5"
    p.write_bytes(b"good")

    def bad(tmp):
        raise ValueError("unreadable")

    with pytest.raises(WriteFailed) as ei:
        replace_bytes(str(p), b"bad", verify=bad)
    assert not ei.value.disk_full
    assert p.read_bytes() == b"good"
    assert sorted(os.listdir(tmp_path)) == ["r.h5"]


def test_disk_full_is_named_and_old_file_kept(tmp_path):
    p = tmp_path / "r.h5"
    p.write_bytes(b"good")

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteFailed) as ei:
        replace_file(str(p), write)
    assert ei.value.disk_full
    assert "disk full while writing" in str(ei.value)
    assert p.read_bytes() == b"good"
    assert sorted(os.listdir(tmp_path)) == ["r.h5"]


def test_disk_full_seen_through_wrapped_messages():
    try:
        try:
            raise OSError(errno.ENOSPC, "x")
        except OSError as e:
            raise RuntimeError("HDF5 error: write failed") from e
    except RuntimeError as wrapped:
        assert is_disk_full(wrapped)
    assert is_disk_full(RuntimeError("H5Dwrite: No space left on device"))
    assert not is_disk_full(ValueError("bad value"))


def test_temporary_file_creation_failure_is_a_write_failure(tmp_path, monkeypatch):
    """Issue 28 item 7: ``mkstemp`` ran outside the wrapper, so no free inode (ENOSPC) or a
    read-only folder was a bare OSError: a traceback (exit 1), or ``fatal: rank 0: OSError``
    for a run, instead of the documented disk-full line."""
    import tempfile

    def no_inode(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", no_inode)
    with pytest.raises(WriteFailed) as info:
        replace_bytes(str(tmp_path / "f"), b"x")
    assert info.value.disk_full and info.value.path == str(tmp_path / "f")

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(WriteFailed) as info:
        replace_bytes(str(tmp_path / "f"), b"x")
    assert not info.value.disk_full and info.value.cause.errno == errno.EROFS


@pytest.mark.parametrize("err, code, phrase", [
    (errno.ENOSPC, 4, "disk full while writing"),
    (errno.EROFS, 2, "Read-only file system; choose a writable output path"),
    (errno.EACCES, 2, "Permission denied; choose a writable output path"),
])
def test_commands_name_an_unwritable_output_in_one_line(tmp_path, monkeypatch, capsys, err, code, phrase):
    """``data synth`` (as ``curate`` and ``normalise``) into a folder where no file can be
    created: one line, exit 4 for a full disk (README's exit codes), 2 for a path the user must change."""
    import tempfile

    from hbl_mpi.__main__ import main

    def fail(*a, **k):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(tempfile, "mkstemp", fail)
    out = tmp_path / "d.h5"
    assert main(["data", "synth", "--cells", "6", "--drugs", "3", "--out", str(out)]) == code
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and phrase in lines[0], lines
    assert lines[0].startswith("hbl_mpi: " + ("fatal: " if code == 4 else "error: "))
    assert not out.exists() and os.listdir(tmp_path) == []
