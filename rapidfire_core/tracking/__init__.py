"""Experiment tracking: MLflow (embedded SQLite store by default, or any tracking server)."""

from rapidfire_core.tracking.mlflow_tracker import MLflowTracker

__all__ = ["MLflowTracker"]
