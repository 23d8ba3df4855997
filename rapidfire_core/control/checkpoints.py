"""Chunk checkpoints of run state on disk: atomic, checksummed, the last K kept per run.

Layout under the experiment (one folder per checkpoint, named by the run's global step):

    runs/<run_id>/checkpoints/step-00000012/
        adapter.safetensors     the run's trainable weights (`Run.adapter_state()`)
        optimizer.pt            optimizer.state_dict()      (torch.save; loaded weights_only)
        scheduler.pt            lr_scheduler.state_dict()
        rng.pt                  the RNG streams the run trains from (python, numpy, torch, cuda)
        trainer_state.json      transformers' TrainerState (global step, log history, ...)
        engine.json             the engine's side: chunk position, chunks_done, the data gate
        manifest.json           {"files": {name: {"sha256", "bytes"}}, "global_step", ...}

Writing (`write`): every file goes into a hidden temporary folder, each is fsynced, the
manifest (checksums of the others) is written and fsynced last, the folder is renamed into
place and its parent fsynced: a reader sees a whole checkpoint or none. Then all but the
newest `keep` checkpoints of the run are removed.

Reading (`latest`): the newest checkpoint whose manifest parses and whose every file has the
recorded size and SHA-256; a torn or corrupted one (a crash in the middle of a write on a
file system without atomic rename, a bad disk block, an edit) is skipped with a warning and
the previous one is used. Temporary folders of a dead writer are ignored (and removed by the
next write of that run).

This module knows files, not trainers: what goes into a checkpoint is
`scheduler.run_checkpoint`'s business.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rapidfire_core import layout
from rapidfire_core.control.faults import fault_point

DEFAULT_KEEP = 2
MANIFEST = "manifest.json"
_PREFIX = "step-"
_TMP_PREFIX = ".tmp-"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (disk full, permission denied, ...): the run fails with it."""


@dataclass(frozen=True)
class CheckpointInfo:
    """A verified checkpoint on disk."""

    path: Path
    global_step: int
    chunks_done: int
    meta: dict[str, Any]  # the manifest's "meta": what the writer recorded beside the files


def run_checkpoint_dir(experiment_path: Path, run_id: int) -> Path:
    """The folder of a run's checkpoints (`rapidfire_core.layout`)."""
    return layout.run_checkpoints_dir(Path(experiment_path), run_id)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # a platform without directory fds (Windows): rename is what we have
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CheckpointStore:
    """The checkpoints of one run (module docstring)."""

    def __init__(self, directory: Path, keep: int = DEFAULT_KEEP) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"checkpoints to keep per run must be an integer >= 1, got {keep!r}")
        self.directory = Path(directory)
        self.keep = keep

    # ---- writing ---------------------------------------------------------------------------------
    def write(self, global_step: int, chunks_done: int, files: dict[str, Any], meta: dict[str, Any]) -> Path:
        """Write one checkpoint atomically; `files` maps a file name to a writer `fn(path)`.
        CheckpointError (with the OS reason) if the disk refuses; the previous checkpoints stay."""
        final = self.directory / f"{_PREFIX}{int(global_step):08d}"
        tmp = self.directory / f"{_TMP_PREFIX}{final.name}-{os.getpid()}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._remove_temporaries()
            tmp.mkdir()
            recorded = {}
            for name, write in files.items():
                path = tmp / name
                write(path)
                _fsync_file(path)
                recorded[name] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
                fault_point("checkpoint_write")
            manifest = {
                "format": FORMAT_VERSION,
                "global_step": int(global_step),
                "chunks_done": int(chunks_done),
                "files": recorded,
                "meta": meta,
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
            _fsync_file(tmp / MANIFEST)
            if final.exists():  # the same step again (a stop right after a chunk end): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(self.directory)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(
                f"could not write the checkpoint of step {global_step} in {self.directory}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self._prune()
        return final

    def _remove_temporaries(self) -> None:
        for path in self.directory.glob(f"{_TMP_PREFIX}*"):
            shutil.rmtree(path, ignore_errors=True)

    def _prune(self) -> None:
        for path in self._folders()[: -self.keep]:
            shutil.rmtree(path, ignore_errors=True)

    # ---- reading ---------------------------------------------------------------------------------
    def _folders(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if p.is_dir() and p.name.startswith(_PREFIX))

    def latest(self) -> CheckpointInfo | None:
        """The newest checkpoint that verifies (module docstring), or None."""
        for path in reversed(self._folders()):
            problem = verify(path)
            if problem is None:
                manifest = json.loads((path / MANIFEST).read_text())
                return CheckpointInfo(
                    path, manifest["global_step"], manifest["chunks_done"], manifest["meta"]
                )
            warnings.warn(
                f"checkpoint {path} is unusable ({problem}); using the one before it",
                RuntimeWarning,
                stacklevel=2,
            )
        return None

    def remove_all(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def verify(path: Path) -> str | None:
    """None if the checkpoint folder is whole; else what is wrong with it."""
    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"no readable manifest: {type(exc).__name__}"
    for name, expected in files.items():
        file = Path(path) / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != expected["bytes"]:
            return f"{name} has {file.stat().st_size} bytes, the manifest says {expected['bytes']}"
        if _sha256(file) != expected["sha256"]:
            return f"{name} does not match its checksum"
    return None


__all__ = [
    "DEFAULT_KEEP",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointStore",
    "run_checkpoint_dir",
    "verify",
]
