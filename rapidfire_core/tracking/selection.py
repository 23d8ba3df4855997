"""Which tracking backends an experiment uses, and building them.

``Experiment(..., trackers=[...])`` names them (any of "mlflow", "tensorboard", "trackio", "wandb"; ``[]``:
none but the training log file). Without it, RapidFire AI's switches decide, read when the
experiment is opened:

    RF_MLFLOW_ENABLED       default "true"
    RF_TENSORBOARD_ENABLED  default "false"
    RF_TRACKIO_ENABLED      default "false"
    RF_WANDB_ENABLED        default "false"

("true"/"1"/"yes"/"on" or "false"/"0"/"no"/"off", any case; anything else is a ValueError
naming the variable.) RapidFire AI's Colab notebooks set ``RF_TRACKING_BACKEND`` instead
("mlflow", "tensorboard" or "both"): it decides the MLflow and TensorBoard switches it names and
leaves the others to their variables. Where each one writes:

    mlflow       the experiment's tracking_uri (default sqlite:///<experiment>/mlflow.db)
    tensorboard  $RF_TENSORBOARD_LOG_DIR/<experiment name>/<run name>/ when that variable is set,
                 else <experiment>/tensorboard_logs/<run name>/
    trackio      Trackio's local store (``tracking.trackio_tracker``)
    wandb        W&B ($WANDB_MODE=offline: $WANDB_DIR, else <experiment>/wandb/; ``tracking.wandb_tracker``)

The training log file (``control.log_files``) always receives the same calls.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from rapidfire_core.tracking.fanout import Trackers

TRACKER_NAMES = ("mlflow", "tensorboard", "trackio", "wandb")
SWITCHES = {
    "mlflow": "RF_MLFLOW_ENABLED",
    "tensorboard": "RF_TENSORBOARD_ENABLED",
    "trackio": "RF_TRACKIO_ENABLED",
    "wandb": "RF_WANDB_ENABLED",
}
DEFAULT_ON = {"mlflow": True, "tensorboard": False, "trackio": False, "wandb": False}
TENSORBOARD_DIR_ENV = "RF_TENSORBOARD_LOG_DIR"
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


def _switch(name: str, environ: Mapping[str, str]) -> bool:
    variable = SWITCHES[name]
    raw = environ.get(variable)
    if raw is None:
        return DEFAULT_ON[name]
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{variable}={raw!r}: use true or false")


BACKEND_ENV = "RF_TRACKING_BACKEND"
_BACKENDS = {
    "mlflow": {"mlflow": True, "tensorboard": False},
    "tensorboard": {"mlflow": False, "tensorboard": True},
    "both": {"mlflow": True, "tensorboard": True},
}


def _tracking_backend(environ: Mapping[str, str]) -> dict[str, bool]:
    raw = environ.get(BACKEND_ENV)
    if raw is None or not raw.strip():
        return {}
    choice = _BACKENDS.get(raw.strip().lower())
    if choice is None:
        raise ValueError(f"{BACKEND_ENV}={raw!r}: use one of {sorted(_BACKENDS)}")
    return choice


def chosen_trackers(trackers: Sequence[str] | None, environ: Mapping[str, str] | None = None) -> list[str]:
    """The backends' names in TRACKER_NAMES order: `trackers` if given, else the RF_*_ENABLED switches."""
    if trackers is None:
        env = os.environ if environ is None else environ
        backend = _tracking_backend(env)
        return [name for name in TRACKER_NAMES if backend.get(name, _switch(name, env))]
    if isinstance(trackers, str):
        raise TypeError(f"trackers must be a list of names, got the string {trackers!r} (use [{trackers!r}])")
    unknown = [t for t in trackers if t not in TRACKER_NAMES]
    if unknown:
        raise ValueError(f"trackers: unknown {unknown}; choose from {list(TRACKER_NAMES)}")
    return [name for name in TRACKER_NAMES if name in trackers]


def tensorboard_dir(
    experiment_name: str, experiment_dir: Path, environ: Mapping[str, str] | None = None
) -> Path:
    env = os.environ if environ is None else environ
    root = env.get(TENSORBOARD_DIR_ENV)
    return Path(root) / experiment_name if root else experiment_dir / "tensorboard_logs"


def build_trackers(
    names: Sequence[str], experiment_name: str, experiment_dir: Path, tracking_uri: str, training_log
) -> Trackers:
    """`Trackers` over the named backends plus `training_log` (a `control.log_files.TrainingLog`)."""
    backends = {}
    for name in names:
        if name == "mlflow":
            from rapidfire_core.tracking.mlflow_tracker import MLflowTracker

            backends[name] = MLflowTracker(experiment_name, tracking_uri)
        elif name == "tensorboard":
            from rapidfire_core.tracking.tensorboard_tracker import TensorBoardTracker

            backends[name] = TensorBoardTracker(tensorboard_dir(experiment_name, experiment_dir))
        elif name == "trackio":
            from rapidfire_core.tracking.trackio_tracker import TrackioTracker

            backends[name] = TrackioTracker(experiment_name)
        elif name == "wandb":
            from rapidfire_core.tracking.wandb_tracker import WandbTracker

            backends[name] = WandbTracker(experiment_name, experiment_dir)
    backends["training log"] = training_log
    return Trackers(backends, primary="mlflow" if "mlflow" in backends else None)


__all__ = ["SWITCHES", "TRACKER_NAMES", "build_trackers", "chosen_trackers", "tensorboard_dir"]
