"""The one place Python imports the compiled module ``rapidfire_core._C``.

The package works without it (a source tree on ``PYTHONPATH``, a failed build):
callers ask :func:`load_native` and take their pure-Python path on ``None``, or
call :func:`require_native` where only the native code will do, which raises an
error that says why the module is missing and how to build it.

Set ``RAPIDFIRE_DISABLE_NATIVE=1`` to behave as if it were not built (tests of
the fallback paths use it).
"""

from __future__ import annotations

import importlib
import os
import threading
from types import ModuleType
from typing import Any

__all__ = ["NativeUnavailableError", "build_info", "load_native", "native_error", "require_native"]

_MODULE_NAME = "rapidfire_core._C"
_DISABLE_ENV = "RAPIDFIRE_DISABLE_NATIVE"
_BUILD_HINT = "build it with `pip install -e .` (or `make`) from the repository root"

_lock = threading.Lock()
_loaded = False
_module: ModuleType | None = None
_error: str | None = None


class NativeUnavailableError(ImportError):
    """A feature that needs ``rapidfire_core._C`` was called, and it is not loaded."""


def _disabled() -> bool:
    return os.environ.get(_DISABLE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def load_native() -> ModuleType | None:
    """Return ``rapidfire_core._C``, or ``None`` when it cannot be imported.

    The first call imports it and remembers the outcome; later calls are free.
    """
    global _loaded, _module, _error
    if _loaded:
        return _module
    with _lock:
        if not _loaded:
            if _disabled():
                _module, _error = None, f"disabled by {_DISABLE_ENV}=1"
            else:
                try:
                    _module, _error = importlib.import_module(_MODULE_NAME), None
                except ImportError as exc:  # not built, or built for another Python
                    _module, _error = None, f"{type(exc).__name__}: {exc}"
            _loaded = True
    return _module


def native_error() -> str | None:
    """Why :func:`load_native` returned ``None``; ``None`` when the module loaded."""
    load_native()
    return _error


def require_native(feature: str) -> ModuleType:
    """Return ``rapidfire_core._C`` or raise :class:`NativeUnavailableError` naming ``feature``."""
    module = load_native()
    if module is None:
        raise NativeUnavailableError(
            f"{feature} needs the compiled module {_MODULE_NAME}, which is not available "
            f"({_error}); {_BUILD_HINT}"
        )
    return module


def build_info() -> dict[str, Any]:
    """Build facts and a live GPU probe of the native module, as a dict.

    With the module loaded this is ``_C.build_info()`` (keys ``version``,
    ``native_loaded``, ``cuda_compiled``, ``cuda_runtime_version``, ``gpu_usable``,
    ``gpu_count``, ``gpu_error``, ...). Without it the same keys are present with
    ``native_loaded: False``, ``gpu_usable: False`` and ``native_error`` saying why.
    """
    module = load_native()
    if module is not None:
        info = dict(module.build_info())
        info.setdefault("native_loaded", True)
        info["native_error"] = None
        return info
    return {
        "version": None,
        "native_loaded": False,
        "native_error": _error,
        "cuda_compiled": False,
        "cuda_toolkit_version": None,
        "cuda_architectures": None,
        "cuda_runtime_version": None,
        "cuda_driver_version": None,
        "gpu_usable": False,
        "gpu_count": 0,
        "gpu_error": f"{_MODULE_NAME} is not loaded",
        "compiler": None,
        "build_type": None,
    }


def _reset_for_tests() -> None:
    """Forget the cached import outcome (tests toggle ``RAPIDFIRE_DISABLE_NATIVE``)."""
    global _loaded, _module, _error
    with _lock:
        _loaded, _module, _error = False, None, None
