"""Crash-safe checkpoint writing, latest pointer, pruning."""

from __future__ import annotations

import errno

import pytest

from sanakit.errors import SanakitError
from sanakit.train.checkpoint import Checkpointer, is_complete


def _writers(payload: bytes):
    return {"a.bin": lambda p: p.write_bytes(payload), "b.json": lambda p: p.write_text("{}")}


def test_save_latest_and_prune(tmp_path) -> None:
    ckpt = Checkpointer(tmp_path, keep_last=2)
    for step in (10, 20, 30):
        folder = ckpt.save(step, _writers(bytes([step])))
        assert is_complete(folder)
    assert ckpt.latest().name == "step-00000030"
    assert [p.name for p in ckpt.complete_checkpoints()] == ["step-00000020", "step-00000030"]
    assert (ckpt.latest() / "a.bin").read_bytes() == bytes([30])


def test_crash_while_writing_keeps_previous_latest(tmp_path) -> None:
    ckpt = Checkpointer(tmp_path, keep_last=1)
    ckpt.save(1, _writers(b"good"))

    def full_disk(path):
        path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(
        SanakitError, match="No space left on device.*latest is still step-00000001"
    ):
        ckpt.save(2, {"a.bin": full_disk})
    assert ckpt.latest().name == "step-00000001"
    assert (ckpt.latest() / "a.bin").read_bytes() == b"good"
    assert not list(ckpt.root.glob(".tmp-*"))


def test_killed_before_rename_leaves_no_visible_checkpoint(tmp_path) -> None:
    ckpt = Checkpointer(tmp_path)
    ckpt.save(1, _writers(b"x"))
    # a SIGKILL mid-write leaves a hidden temp folder without manifest
    stale = ckpt.root / ".tmp-step-00000002-999999"
    stale.mkdir()
    (stale / "a.bin").write_bytes(b"half")
    assert ckpt.latest().name == "step-00000001"
    ckpt.save(3, _writers(b"y"))
    assert not stale.exists()


def test_truncated_file_is_not_complete_and_latest_falls_back(tmp_path) -> None:
    ckpt = Checkpointer(tmp_path, keep_last=5)
    ckpt.save(1, _writers(b"one"))
    second = ckpt.save(2, _writers(b"two"))
    (second / "a.bin").write_bytes(b"t")  # corrupted after the fact
    assert not is_complete(second)
    assert ckpt.latest().name == "step-00000001"


def test_resolve(tmp_path) -> None:
    ckpt = Checkpointer(tmp_path)
    with pytest.raises(SanakitError, match="no complete checkpoint"):
        ckpt.resolve("latest")
    folder = ckpt.save(5, _writers(b"z"))
    assert ckpt.resolve("latest") == folder
    assert ckpt.resolve(str(folder)) == folder
    with pytest.raises(SanakitError, match="not a complete checkpoint"):
        ckpt.resolve(str(tmp_path))
