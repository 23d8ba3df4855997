"""What the installed build of rapidfire_core can do on this machine, and why (``rapidfire info``).

The build variant is named by the package version's local label (``0.1.0+cu130``, ``0.1.0+cpu``;
docs/install.md) and by the compiled module's own build facts (``_native.build_info()``), which
win when they disagree (a PyPI upload carries no label). Three capabilities depend on it:

* the run-state pool on CPU (``StatePool("cpu", ...)``): needs the compiled module, any variant;
* the run-state pool on a GPU (``gpu_state_budget``: runs' adapters and optimizer state parked in
  pinned host memory, copied back asynchronously): needs a CUDA variant, an NVIDIA driver new
  enough for its CUDA runtime (:data:`MIN_DRIVER_BY_CUDA_MAJOR`) and a visible GPU. Without it
  ``gpu_state_budget`` is ignored (with a warning) and every run stays on the device;
* training on a GPU at all: torch's own CUDA build and a visible GPU (independent of our variant).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["MIN_DRIVER_BY_CUDA_MAJOR", "BuildReport", "Capability", "build_report", "format_report"]

# Lowest Linux driver each CUDA major version runs on (CUDA's minor-version compatibility: a
# runtime of CUDA X.y runs on any driver of the X family's first release or newer; NVIDIA's
# "CUDA Compatibility" guide). Our CUDA code is host-side runtime calls only (no kernels, so no PTX
# JIT that would need the toolkit's own driver).
MIN_DRIVER_BY_CUDA_MAJOR = {12: "525.60.13", 13: "580.65.06"}


@dataclass(frozen=True)
class Capability:
    """One thing rapidfire_core can or cannot do here; ``reason`` says why (always filled)."""

    name: str
    available: bool
    reason: str


@dataclass(frozen=True)
class BuildReport:
    """The build variant and what it can do on this machine.

    variant: "cpu", "cu130" (CUDA major+minor of the runtime compiled in) or "not loaded".
    cuda_runtime: "13.0" for a CUDA variant, else None. min_driver: the Linux driver that runtime
    needs (None for cpu). driver_cuda: the CUDA version the installed driver supports ("12.4"),
    None when no driver loads.
    """

    version: str
    variant: str
    cuda_runtime: str | None
    min_driver: str | None
    driver_cuda: str | None
    capabilities: list[Capability] = field(default_factory=list)


def _cuda_version(encoded: int | None) -> str | None:
    """12040 -> "12.4" (the CUDA API's 1000 * major + 10 * minor encoding)."""
    if not encoded:
        return None
    return f"{encoded // 1000}.{encoded % 1000 // 10}"


def _variant(native: dict[str, Any]) -> str:
    if not native.get("native_loaded"):
        return "not loaded"
    runtime = native.get("cuda_runtime_version")
    if native.get("cuda_compiled") and runtime:
        return f"cu{runtime // 1000}{runtime % 1000 // 10}"
    return "cpu"


def build_report(
    version: str, native: dict[str, Any], torch_cuda: str | None, torch_gpu_usable: bool
) -> BuildReport:
    """Combine the compiled module's facts (``_native.build_info()``) and torch's view of the GPU.

    torch_cuda: ``torch.version.cuda`` (None for a CPU torch); torch_gpu_usable:
    ``torch.cuda.is_available()``.
    """
    variant = _variant(native)
    runtime = native.get("cuda_runtime_version") if native.get("cuda_compiled") else None
    min_driver = MIN_DRIVER_BY_CUDA_MAJOR.get(runtime // 1000) if runtime else None
    driver_cuda = _cuda_version(native.get("cuda_driver_version"))

    loaded = bool(native.get("native_loaded"))
    cpu_pool = Capability(
        "run-state pool on CPU",
        loaded,
        "the compiled module rapidfire_core._C is loaded"
        if loaded
        else f"rapidfire_core._C is not loaded: {native.get('native_error')}",
    )

    if not loaded:
        why = f"rapidfire_core._C is not loaded: {native.get('native_error')}"
    elif not native.get("cuda_compiled"):
        why = "this is the cpu build (no CUDA code compiled in); install a CUDA build (docs/install.md)"
    elif not native.get("gpu_usable"):
        why = str(native.get("gpu_error"))
        if min_driver:
            why += f" (this cu build needs NVIDIA driver >= {min_driver})"
    else:
        why = f"{native.get('gpu_count')} GPU(s) visible, driver supports CUDA {driver_cuda}"
    gpu_pool = Capability(
        "run-state pool on GPU (gpu_state_budget)", bool(loaded and native.get("gpu_usable")), why
    )

    if torch_gpu_usable:
        torch_why = f"torch {torch_cuda} sees a GPU"
    elif torch_cuda is None:
        torch_why = "the installed torch is a CPU build (torch.version.cuda is None)"
    else:
        torch_why = f"torch is built for CUDA {torch_cuda} but torch.cuda.is_available() is False"
    gpu_training = Capability("training on GPU (torch)", torch_gpu_usable, torch_why)

    return BuildReport(
        version=version,
        variant=variant,
        cuda_runtime=_cuda_version(runtime),
        min_driver=min_driver,
        driver_cuda=driver_cuda,
        capabilities=[cpu_pool, gpu_pool, gpu_training],
    )


def format_report(report: BuildReport) -> list[str]:
    """The report as the lines ``rapidfire info`` prints."""
    if report.variant == "cpu":
        build = "cpu (no CUDA code compiled in)"
    elif report.variant == "not loaded":
        build = "unknown: the compiled module rapidfire_core._C is not loaded"
    else:
        build = (
            f"{report.variant} (CUDA {report.cuda_runtime} runtime linked in; "
            f"needs NVIDIA driver >= {report.min_driver}, no CUDA toolkit)"
        )
    driver = f"supports CUDA {report.driver_cuda}" if report.driver_cuda else "none loaded"
    lines = [f"rapidfire_core {report.version}, build: {build}", f"NVIDIA driver: {driver}"]
    for cap in report.capabilities:
        lines.append(f"  [{'yes' if cap.available else 'no'}] {cap.name}: {cap.reason}")
    return lines
