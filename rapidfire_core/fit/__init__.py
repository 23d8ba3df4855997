"""RapidFire AI's fit-mode namespace, for notebooks ported by renaming the import.

RapidFire AI's fine-tuning notebooks import ``rapidfireai.fit.automl``; the mechanical rename
``rapidfireai`` -> ``rapidfire_core`` gives ``rapidfire_core.fit.automl``, which holds the same
objects as ``rapidfire_core.automl`` (``rapidfire_core.fit.automl.RFGridSearch is
rapidfire_core.automl.RFGridSearch``). ``rapidfire_core.fit.Experiment`` is
``rapidfire_core.Experiment``.
"""

from __future__ import annotations

__all__ = ["Experiment", "automl"]


def __getattr__(name: str):
    # Lazy, as in the top-level package: importing the namespace does not pull in torch and TRL.
    if name == "Experiment":
        from rapidfire_core.experiment import Experiment

        return Experiment
    if name == "automl":
        import importlib

        return importlib.import_module("rapidfire_core.fit.automl")
    raise AttributeError(f"module 'rapidfire_core.fit' has no attribute {name!r}")
