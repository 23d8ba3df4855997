"""rapidfire_core.build_report: what `rapidfire info` says the installed build can do here, and why."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

from rapidfire_core import _native
from rapidfire_core.build_report import MIN_DRIVER_BY_CUDA_MAJOR, build_report, format_report


def _native_facts(**overrides) -> dict:
    """Facts of a cu130 build on a machine with one usable GPU, then `overrides`."""
    facts = {
        "version": "0.1.0+cu130",
        "native_loaded": True,
        "native_error": None,
        "cuda_compiled": True,
        "cuda_runtime_version": 13000,
        "cuda_driver_version": 13010,
        "gpu_usable": True,
        "gpu_count": 1,
        "gpu_error": None,
    }
    facts.update(overrides)
    return facts


def _capabilities(report) -> dict[str, tuple[bool, str]]:
    return {c.name: (c.available, c.reason) for c in report.capabilities}


def test_cuda_build_with_gpu_can_pool_on_gpu() -> None:
    report = build_report("0.1.0+cu130", _native_facts(), "13.0", True)
    assert (report.variant, report.cuda_runtime, report.min_driver) == ("cu130", "13.0", "580.65.06")
    assert report.driver_cuda == "13.1"
    caps = _capabilities(report)
    assert all(available for available, _ in caps.values()), caps
    assert "needs NVIDIA driver >= 580.65.06" in format_report(report)[0]


def test_driver_too_old_names_the_minimum() -> None:
    message = "the NVIDIA driver supports CUDA 12.4 but this build's CUDA runtime is 13.0"
    facts = _native_facts(cuda_driver_version=12040, gpu_usable=False, gpu_count=0, gpu_error=message)
    report = build_report("0.1.0+cu130", facts, "12.4", True)
    available, reason = _capabilities(report)["run-state pool on GPU (gpu_state_budget)"]
    assert not available
    assert message in reason and "driver >= 580.65.06" in reason
    assert "NVIDIA driver: supports CUDA 12.4" in format_report(report)


def test_cpu_build_says_it_has_no_cuda_code() -> None:
    facts = _native_facts(
        version="0.1.0+cpu",
        cuda_compiled=False,
        cuda_runtime_version=None,
        cuda_driver_version=None,
        gpu_usable=False,
        gpu_count=0,
        gpu_error="rapidfire_core._C was built without CUDA (CPU-only build)",
    )
    report = build_report("0.1.0+cpu", facts, None, False)
    assert (report.variant, report.min_driver) == ("cpu", None)
    caps = _capabilities(report)
    assert caps["run-state pool on CPU"][0] is True
    assert caps["run-state pool on GPU (gpu_state_budget)"] == (
        False,
        "this is the cpu build (no CUDA code compiled in); install a CUDA build (docs/install.md)",
    )
    assert "CPU build" in caps["training on GPU (torch)"][1]


def test_module_not_loaded_says_why() -> None:
    facts = {"native_loaded": False, "native_error": "ImportError: no module named rapidfire_core._C"}
    report = build_report("0.1.0", facts, None, False)
    assert report.variant == "not loaded"
    for name in ("run-state pool on CPU", "run-state pool on GPU (gpu_state_budget)"):
        available, reason = _capabilities(report)[name]
        assert not available and "no module named rapidfire_core._C" in reason


def test_minimum_drivers_cover_the_cuda_majors_we_build() -> None:
    assert set(MIN_DRIVER_BY_CUDA_MAJOR) == {12, 13}


def _driver_loads() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def test_no_driver_at_all_is_named_as_such() -> None:
    """The issue: a CUDA build on a machine without any driver said 'driver version is insufficient'."""
    facts = _native.build_info()
    if not facts["native_loaded"] or not facts["cuda_compiled"]:
        pytest.skip("the loaded rapidfire_core._C is a cpu build (or missing): it has no CUDA probe")
    if _driver_loads():
        pytest.skip("an NVIDIA driver (libcuda.so.1) is installed on this machine")
    assert facts["gpu_usable"] is False and facts["cuda_driver_version"] is None
    assert facts["gpu_error"].startswith("no NVIDIA driver: libcuda.so.1 cannot be loaded"), facts[
        "gpu_error"
    ]
    assert "insufficient" not in facts["gpu_error"]


def test_rapidfire_info_prints_the_report() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "rapidfire_core.cli", "info"], capture_output=True, text=True, check=True
    ).stdout
    first, driver_line = out.splitlines()[:2]
    assert first.startswith("rapidfire_core ") and ", build: " in first
    assert driver_line.startswith("NVIDIA driver: ")
    for name in ("run-state pool on CPU", "run-state pool on GPU (gpu_state_budget)", "training on GPU"):
        assert name in out
    assert "driver version is insufficient" not in out or _driver_loads()
