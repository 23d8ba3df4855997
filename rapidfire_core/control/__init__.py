"""Durable stores under an experiment: runs and their metrics, and interactive-control commands."""

from rapidfire_core.control.command_store import Command, CommandError, CommandStore
from rapidfire_core.control.run_status import ALLOWED_TRANSITIONS, IllegalTransition, RunStatus
from rapidfire_core.control.run_store import RunStore

__all__ = [
    "ALLOWED_TRANSITIONS",
    "Command",
    "CommandError",
    "CommandStore",
    "IllegalTransition",
    "RunStatus",
    "RunStore",
]
