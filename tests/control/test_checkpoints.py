"""Chunk checkpoints on disk: atomic folders, checksums, the last K kept, a refused disk."""

from __future__ import annotations

import json

import pytest

from rapidfire_core.control.checkpoints import CheckpointError, CheckpointStore, verify


def _files(payload: bytes):
    return {"a.bin": lambda p: p.write_bytes(payload), "b.json": lambda p: p.write_text(json.dumps({"x": 1}))}


def _write(store: CheckpointStore, step: int, payload: bytes = b"weights"):
    return store.write(step, chunks_done=step // 2, files=_files(payload + bytes([step])), meta={"m": step})


def test_latest_is_the_newest_whole_checkpoint_and_only_the_last_k_are_kept(tmp_path):
    store = CheckpointStore(tmp_path / "ckpt", keep=2)
    assert store.latest() is None
    for step in (2, 4, 6):
        _write(store, step)
    assert [p.name for p in sorted(store.directory.iterdir())] == ["step-00000004", "step-00000006"]
    info = store.latest()
    assert (info.global_step, info.chunks_done, info.meta) == (6, 3, {"m": 6})
    assert (info.path / "a.bin").read_bytes() == b"weights\x06"


def test_a_torn_or_corrupted_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    store = CheckpointStore(tmp_path / "ckpt", keep=3)
    for step in (2, 4, 6):
        _write(store, step)
    newest = store.directory / "step-00000006"
    (newest / "a.bin").write_bytes(b"weightz\x06")  # same size, other bytes: the checksum tells
    assert verify(newest) == "a.bin does not match its checksum"
    with pytest.warns(RuntimeWarning, match="step-00000006 is unusable"):
        assert store.latest().global_step == 4
    (store.directory / "step-00000004" / "b.json").write_text("{")  # truncated
    (store.directory / "step-00000002" / "manifest.json").unlink()  # torn before its manifest
    with pytest.warns(RuntimeWarning):
        assert store.latest() is None


def test_a_crash_mid_write_leaves_only_a_temporary_folder_which_is_ignored_and_cleaned(tmp_path):
    store = CheckpointStore(tmp_path / "ckpt")
    _write(store, 2)
    torn = store.directory / ".tmp-step-00000004-999"
    torn.mkdir()
    (torn / "a.bin").write_bytes(b"half")
    assert store.latest().global_step == 2
    _write(store, 4)
    assert not torn.exists() and store.latest().global_step == 4


def test_a_refused_disk_raises_checkpoint_error_and_keeps_the_previous_checkpoint(tmp_path):
    store = CheckpointStore(tmp_path / "ckpt")
    _write(store, 2)

    def no_space(path):
        raise OSError(28, "No space left on device")

    with pytest.raises(CheckpointError, match="No space left on device"):
        store.write(4, 2, {"a.bin": no_space}, {})
    assert store.latest().global_step == 2
    assert [p.name for p in store.directory.iterdir()] == ["step-00000002"]  # no temporary left
    with pytest.raises(ValueError, match="keep"):
        CheckpointStore(tmp_path, keep=0)
