"""rapidfire_core: train many TRL fine-tuning configurations concurrently on one device.

The user-facing entry points are :class:`rapidfire_core.Experiment` and the knobs and
searches in :mod:`rapidfire_core.automl` (names follow RapidFire AI's public API so a
notebook ports by changing the import).
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("rapidfire_core")
except _metadata.PackageNotFoundError:  # running from a source tree without an install
    from rapidfire_core._version import BASE_VERSION as __version__

__all__ = ["Experiment", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import rapidfire_core` (e.g. for `_native.build_info()`) does not pull
    # in torch, transformers and TRL.
    if name == "Experiment":
        from rapidfire_core.experiment import Experiment

        return Experiment
    raise AttributeError(f"module 'rapidfire_core' has no attribute {name!r}")
