"""Experiment tracking: MLflow (embedded SQLite store by default, or any tracking server), and
TensorBoard, Trackio and W&B as further backends (``tracking.selection``).

``MLflowTracker`` is imported on first use, so that importing one backend's module (or the
selection logic) does not load MLflow.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MLflowTracker"]


def __getattr__(name: str) -> Any:
    if name == "MLflowTracker":
        from rapidfire_core.tracking.mlflow_tracker import MLflowTracker

        return MLflowTracker
    raise AttributeError(f"module 'rapidfire_core.tracking' has no attribute {name!r}")
