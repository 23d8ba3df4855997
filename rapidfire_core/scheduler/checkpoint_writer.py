"""Writing chunk checkpoints off the training path: one background thread, in order.

At a chunk end the controller takes a host copy of the run's state (`run_checkpoint.capture`,
5-11 ms for the demo's runs) and hands the write (files, fsyncs, manifest, rename, pruning:
50-65 ms on the 2-core dev machine, most of it torch.save and fsync) to this writer, so the
next turn starts at once (benchmarks/RESULTS.md, "Chunk checkpoints"). Writes run one
at a time in submission order, so a run's checkpoints land in step order and MLflow is told
about a checkpoint's steps (`then`) only after it is on disk.

A failed write (disk full, permission denied) is kept for its run: `take_error(run_id)` hands it
to the controller, which fails that run at its next turn end. `drain()` waits for every queued
write (before a run is stopped for good, completed, or the fit ends). A process killed with
writes queued loses only those checkpoints: each run continues from its last one on disk.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from rapidfire_core.control.checkpoints import CheckpointError


class CheckpointWriter:
    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._errors: dict[int, CheckpointError] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, run_id: int, write: Callable[[], Any], then: Callable[[], None]) -> None:
        """Queue `write()`; `then()` runs after it succeeded (both in the writer thread)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="rapidfire-checkpoints", daemon=True)
            self._thread.start()
        self._queue.put((run_id, write, then))

    def _loop(self) -> None:
        while True:
            run_id, write, then = self._queue.get()
            try:
                write()
                then()
            except CheckpointError as exc:
                with self._lock:
                    self._errors[run_id] = exc
            except Exception as exc:  # noqa: BLE001 - a bug in one write must not end the writer
                with self._lock:
                    self._errors[run_id] = CheckpointError(f"{type(exc).__name__}: {exc}")
            finally:
                self._queue.task_done()

    def drain(self) -> None:
        """Wait until every queued write is done."""
        self._queue.join()

    def take_error(self, run_id: int) -> CheckpointError | None:
        with self._lock:
            return self._errors.pop(run_id, None)


__all__ = ["CheckpointWriter"]
