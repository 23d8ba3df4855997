"""Holding off Ctrl-C while the engine brings its runs to a consistent state.

A KeyboardInterrupt ends `run_fit`: the controller then stops every run in flight (store row
STOPPED, MLflow run KILLED). A second Ctrl-C landing in the middle of that used to leave one
run ONGOING / RUNNING. Inside `sigint_deferred()` further SIGINTs are noted, not raised; the
interrupt already under way finishes the clean-up and propagates.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """No KeyboardInterrupt inside the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def note(signum, frame) -> None:
        print("rapidfire: still stopping the runs in flight, one moment", file=sys.stderr, flush=True)

    try:
        previous = signal.signal(signal.SIGINT, note)
    except ValueError:  # not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


__all__ = ["sigint_deferred"]
