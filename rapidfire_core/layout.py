"""The on-disk layout of experiments: every path and file name the engine uses, in one place.

    <root>/                              experiment_path, else $RF_EXPERIMENT_PATH, else
                                         ./rapidfire_experiments (an empty value counts as unset)
      <name>/                            one experiment (`control.experiment_name` says which
                                         names are allowed)
        runs.db                          the run store and the command store (`control`)
        mlflow.db                        MLflow's default store (`tracking.mlflow_tracker`)
        logs/rapidfire.log, training.log (`control.log_files`)
        runs/<run_id>/                   a run's folder: its trainer's output_dir
          adapter/                       a finished LoRA run's adapter (PEFT format)
          model/                         a finished full fine-tuning run's model
          checkpoints/step-<N>/          its chunk checkpoints (`control.checkpoints`)

The Experiment, the CLI, the dashboard and the executors all ask this module; none spells a
path itself. It imports nothing heavy (the CLI and the dashboard import it without torch).
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT_ENV = "RF_EXPERIMENT_PATH"
DEFAULT_ROOT = "rapidfire_experiments"
DB_NAME = "runs.db"
MLFLOW_DB_NAME = "mlflow.db"
LOG_DIR_NAME = "logs"
RUNS_DIR_NAME = "runs"
ADAPTER_DIR_NAME = "adapter"
MODEL_DIR_NAME = "model"
CHECKPOINTS_DIR_NAME = "checkpoints"


def experiments_root(experiment_path: str | os.PathLike | None = None) -> Path:
    """The root folder of experiments: `experiment_path` if given (non-empty), else
    $RF_EXPERIMENT_PATH if set and non-empty, else ./rapidfire_experiments. Not resolved."""
    chosen = experiment_path if experiment_path not in (None, "") else os.environ.get(ROOT_ENV)
    return Path(chosen or DEFAULT_ROOT)


def experiment_dir(root: str | os.PathLike, name: str) -> Path:
    """The folder of experiment `name` under `root` (the name is checked by the caller)."""
    return Path(root) / name


def runs_db(experiment: Path) -> Path:
    return experiment / DB_NAME


def mlflow_db(experiment: Path) -> Path:
    return experiment / MLFLOW_DB_NAME


def logs_dir(experiment: Path) -> Path:
    return experiment / LOG_DIR_NAME


def runs_dir(experiment: Path) -> Path:
    """Where the runs' folders are (also the scratch folder of validation before any run exists)."""
    return experiment / RUNS_DIR_NAME


def run_dir(experiment: Path, run_id: int) -> Path:
    return runs_dir(experiment) / str(run_id)


def run_adapter_dir(experiment: Path, run_id: int) -> Path:
    return run_dir(experiment, run_id) / ADAPTER_DIR_NAME


def run_model_dir(experiment: Path, run_id: int) -> Path:
    return run_dir(experiment, run_id) / MODEL_DIR_NAME


def run_checkpoints_dir(experiment: Path, run_id: int) -> Path:
    return run_dir(experiment, run_id) / CHECKPOINTS_DIR_NAME


def is_experiment_dir(path: Path) -> bool:
    """True for a folder that holds an experiment's run store."""
    return runs_db(path).is_file()


__all__ = [
    "DB_NAME",
    "DEFAULT_ROOT",
    "ROOT_ENV",
    "experiment_dir",
    "experiments_root",
    "is_experiment_dir",
    "logs_dir",
    "mlflow_db",
    "run_adapter_dir",
    "run_checkpoints_dir",
    "run_dir",
    "run_model_dir",
    "runs_db",
    "runs_dir",
]
