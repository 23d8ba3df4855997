"""The compiled module rapidfire_core._C: build facts, GPU probe, fallback, packaging."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from rapidfire_core import _native

ROOT = Path(__file__).resolve().parents[1]
NATIVE_KEYS = {
    "version": str,
    "native_loaded": bool,
    "cuda_compiled": bool,
    "cuda_runtime_version": (int, type(None)),
    "cuda_driver_version": (int, type(None)),
    "cuda_toolkit_version": (str, type(None)),
    "cuda_architectures": (str, type(None)),
    "gpu_usable": bool,
    "gpu_count": int,
    "gpu_error": (str, type(None)),
    "compiler": str,
    "build_type": str,
}
# What a build needs from the source tree (copied so tests never write into the repo).
SOURCE_ITEMS = (
    "setup.py",
    "pyproject.toml",
    "CMakeLists.txt",
    "README.md",
    "csrc",
    "python",
    "rapidfire_core",
)


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def native():
    module = _native.load_native()
    assert module is not None, f"rapidfire_core._C did not load: {_native.native_error()}"
    return module


@pytest.fixture
def info(native) -> dict:
    return native.build_info()


def test_native_module_imports(native) -> None:
    import rapidfire_core._C as c

    assert c is native
    assert _native.native_error() is None
    assert _native.require_native("test") is native


def test_build_info_keys_and_types(info: dict) -> None:
    for key, expected in NATIVE_KEYS.items():
        assert key in info, key
        assert isinstance(info[key], expected), (key, info[key])
    assert info["native_loaded"] is True
    assert info["build_type"]


def test_version_matches_package_metadata(info: dict) -> None:
    assert info["version"] == importlib.metadata.version("rapidfire_core")
    assert info["version"] == _pyproject()["project"]["version"]


def test_build_requires_never_torch() -> None:
    requires = _pyproject()["build-system"]["requires"]
    assert not [r for r in requires if r.lower().startswith("torch")], requires


def test_cuda_compiled_when_nvcc_present(info: dict) -> None:
    if shutil.which("nvcc") is None:
        pytest.skip("no nvcc on PATH: the build is CPU-only by design")
    if os.environ.get("RAPIDFIRE_CUDA", "").lower() in ("0", "off", "false", "no"):
        pytest.skip("RAPIDFIRE_CUDA=0 forces a CPU-only build")
    assert info["cuda_compiled"] is True
    assert isinstance(info["cuda_runtime_version"], int) and info["cuda_runtime_version"] >= 11000
    assert info["cuda_toolkit_version"]
    assert info["cuda_architectures"]  # "90-real 90-virtual" unless CUDAARCHS/CMAKE_ARGS override it


def test_cuda_fields_consistent(info: dict) -> None:
    if not info["cuda_compiled"]:
        assert info["cuda_runtime_version"] is None
        assert info["gpu_usable"] is False
        assert "without CUDA" in info["gpu_error"]
    if info["gpu_usable"]:
        assert info["gpu_count"] >= 1 and info["gpu_error"] is None
    else:
        assert info["gpu_count"] == 0 and info["gpu_error"]


def test_gpu_probe_reports_reason_without_gpu(info: dict) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is available")
    assert info["gpu_usable"] is False
    assert info["gpu_count"] == 0
    assert isinstance(info["gpu_error"], str) and info["gpu_error"].strip()


@pytest.mark.gpu
def test_gpu_probe_sees_torch_devices(info: dict) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    assert info["cuda_compiled"] is True
    assert info["gpu_usable"] is True, info["gpu_error"]
    assert info["gpu_count"] == torch.cuda.device_count()
    assert info["cuda_driver_version"] is not None


def test_wrapper_matches_native(info: dict) -> None:
    wrapped = _native.build_info()
    assert wrapped["native_error"] is None
    assert set(info) <= set(wrapped)
    static = {k for k in info if not k.startswith(("gpu_", "cuda_driver"))}
    assert {k: wrapped[k] for k in static} == {k: info[k] for k in static}


def test_fallback_when_native_disabled(monkeypatch: pytest.MonkeyPatch, info: dict) -> None:
    monkeypatch.setenv("RAPIDFIRE_DISABLE_NATIVE", "1")
    _native._reset_for_tests()
    try:
        assert _native.load_native() is None
        fallback = _native.build_info()
        assert set(info) <= set(fallback)
        assert fallback["native_loaded"] is False and fallback["gpu_usable"] is False
        assert "RAPIDFIRE_DISABLE_NATIVE" in fallback["native_error"]
        with pytest.raises(_native.NativeUnavailableError, match="pinned pool"):
            _native.require_native("pinned pool")
    finally:
        monkeypatch.delenv("RAPIDFIRE_DISABLE_NATIVE")
        _native._reset_for_tests()
    assert _native.load_native() is not None


def _copy_sources(dest: Path) -> Path:
    """Copy what a build reads into ``dest`` (no build outputs, no caches)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info", "*.pyc")
    dest.mkdir(parents=True)
    for name in SOURCE_ITEMS:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def test_source_tree_without_native_imports(tmp_path: Path) -> None:
    """A source checkout on sys.path, never built, still imports and reports why."""
    src = _copy_sources(tmp_path / "src")
    # Drop the editable-install finder: it would map rapidfire_core._C to the repo's build.
    code = (
        "import json, sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]; "
        "import rapidfire_core._native as n; "
        "print(json.dumps({'file': n.__file__, 'info': n.build_info()}))"
    )
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=src, env=env, capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["file"].startswith(str(src)), result["file"]
    assert result["info"]["native_loaded"] is False
    assert "rapidfire_core._C" in result["info"]["native_error"]


def test_sdist_carries_native_sources(tmp_path: Path) -> None:
    src = _copy_sources(tmp_path / "src")
    code = f"import setuptools.build_meta as b; print(b.build_sdist({str(tmp_path / 'dist')!r}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-4000:]
    sdist = tmp_path / "dist" / out.stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in (
        "CMakeLists.txt",
        "setup.py",
        "csrc/build_info.cpp",
        "csrc/cuda/probe.cu",
        "csrc/include/rapidfire/build_info.h",
        "python/module.cpp",
        "rapidfire_core/_native.py",
    ):
        assert needed in names, needed


def _pip(*args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
    """Run pip offline with this interpreter; fail with its output."""
    cmd = [sys.executable, "-m", "pip", *args, "--no-index"]
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"


def test_wheel_builds_and_imports_elsewhere(tmp_path: Path, info: dict) -> None:
    """`pip wheel` (offline, no isolation), install with --target, import from another cwd."""
    src = _copy_sources(tmp_path / "src")
    dist, target = tmp_path / "dist", tmp_path / "site"
    env = {**os.environ, "RAPIDFIRE_BUILD_DIR": str(tmp_path / "cmake-build")}
    _pip("wheel", ".", "--no-deps", "--no-build-isolation", "-w", str(dist), cwd=src, env=env)
    (wheel,) = dist.glob("rapidfire_core-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert any(n.startswith("rapidfire_core/_C") and n.endswith(".so") for n in names), names
    assert "rapidfire_core/_native.py" in names
    assert not any(n.startswith(("csrc/", "python/", "tests/")) for n in names), names

    _pip("install", "--no-deps", "--target", str(target), str(wheel), cwd=tmp_path)
    code = "import json, rapidfire_core._C as c; print(json.dumps({'f': c.__file__, 'info': c.build_info()}))"
    run_env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=run_env, capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["f"].startswith(str(target)), result["f"]
    assert result["info"]["version"] == _pyproject()["project"]["version"]
    assert result["info"]["cuda_compiled"] == info["cuda_compiled"]  # same toolchain as the dev build
