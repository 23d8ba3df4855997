"""Run store and (later) interactive control of runs in flight."""

from rapidfire_core.control.run_status import RunStatus
from rapidfire_core.control.run_store import RunStore

__all__ = ["RunStatus", "RunStore"]
