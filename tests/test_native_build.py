"""The compiled module rapidfire_core._C: build facts, GPU probe, fallback, packaging."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
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
    "LICENSE",
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


def _installed_from_this_tree() -> bool:
    """Whether the installed rapidfire_core metadata is this checkout's (an editable install of it)."""
    try:
        dist = importlib.metadata.distribution("rapidfire_core")
    except importlib.metadata.PackageNotFoundError:
        return False
    direct = dist.read_text("direct_url.json")
    return direct is not None and json.loads(direct).get("url", "").rstrip("/") == ROOT.as_uri()


def _expected_label(info: dict) -> str:
    """The local version label a build with these facts carries: cpu or cu<major><minor>."""
    runtime = info["cuda_runtime_version"]
    return f"cu{runtime // 1000}{runtime % 1000 // 10}" if info["cuda_compiled"] else "cpu"


def test_version_names_release_and_variant(info: dict) -> None:
    from rapidfire_core._version import BASE_VERSION

    release, _, label = info["version"].partition("+")
    assert release == BASE_VERSION
    assert label in ("", _expected_label(info))  # "" only for RAPIDFIRE_LOCAL_VERSION=0 builds
    if not _installed_from_this_tree():
        pytest.skip("the installed rapidfire_core metadata belongs to another checkout")
    assert info["version"] == importlib.metadata.version("rapidfire_core")


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


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("sdist")
    src = _copy_sources(tmp / "src")
    code = f"import setuptools.build_meta as b; print(b.build_sdist({str(tmp / 'dist')!r}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-4000:]
    return tmp / "dist" / out.stdout.strip().splitlines()[-1]


def test_sdist_carries_native_sources_and_license(sdist: Path) -> None:
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in (
        "CMakeLists.txt",
        "setup.py",
        "LICENSE",
        "csrc/build_info.cpp",
        "csrc/cuda/probe.cu",
        "csrc/compat/glibc_compat.cpp",
        "csrc/compat/glibc_pinned_symbols.def",
        "csrc/include/rapidfire/build_info.h",
        "python/module.cpp",
        "rapidfire_core/_native.py",
        "rapidfire_core/_version.py",
    ):
        assert needed in names, needed


def test_sdist_without_compiler_says_what_is_needed(sdist: Path, tmp_path: Path) -> None:
    """No C++ compiler: the install fails before CMake, naming the compiler and the wheel route."""
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CXX", "CC", "RAPIDFIRE_BUILD_DIR")}
    env.update(PATH=str(empty_bin), RAPIDFIRE_CUDA="0")
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation"]
    cmd += ["--target", str(tmp_path / "site"), str(sdist)]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "needs a C++17 compiler" in text, text[-4000:]
    assert "--only-binary rapidfire_core" in text
    assert "CMAKE_CXX_COMPILER" not in text


def _pip(*args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
    """Run pip offline with this interpreter; fail with its output."""
    cmd = [sys.executable, "-m", "pip", *args, "--no-index"]
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"


@pytest.fixture(scope="module")
def wheel_build(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Build the wheel once per session, the way `python -m build` does from a developer's tree.

    The build tools look isolated (pybind11 imported from a temporary directory, as in pip's and
    build's isolated envs), and the source tree holds a developer's incremental CMake tree with a
    stale fingerprint: the build must leave it alone. Then `auditwheel repair` for manylinux_2_28.
    One C++ build (plus nvcc where present): 30-90 s on two cores, depending on their load.
    """
    import pybind11

    tmp = tmp_path_factory.mktemp("wheel")
    src = _copy_sources(tmp / "src")
    isolated = tmp / "isolated-env"
    shutil.copytree(Path(pybind11.__file__).parent, isolated / "pybind11")
    dev_tree = src / "build" / f"cmake-{sys.implementation.cache_tag}-dev"
    dev_tree.mkdir(parents=True)
    (dev_tree / "rapidfire-fingerprint.json").write_text('{"another": "toolchain"}')
    (dev_tree / "incremental-object.o").write_text("kept")

    env = {k: v for k, v in os.environ.items() if k != "RAPIDFIRE_BUILD_DIR"}
    env["PYTHONPATH"] = os.pathsep.join([str(isolated), env.get("PYTHONPATH", "")])
    raw, dist = tmp / "raw", tmp / "dist"
    _pip("wheel", ".", "--no-deps", "--no-build-isolation", "-w", str(raw), cwd=src, env=env)
    (wheel,) = raw.glob("rapidfire_core-*.whl")
    repair = [sys.executable, "-m", "auditwheel", "repair", "--plat", "manylinux_2_28_x86_64"]
    repair_env = {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
    }
    out = subprocess.run(
        [*repair, "-w", str(dist), str(wheel)], env=repair_env, capture_output=True, text=True
    )
    return {"src": src, "dev_tree": dev_tree, "raw": wheel, "repair": out, "dist": dist, "tmp": tmp}


def test_python_build_leaves_developer_tree_alone(wheel_build: dict) -> None:
    dev_tree = wheel_build["dev_tree"]
    assert (dev_tree / "incremental-object.o").read_text() == "kept"
    assert (dev_tree / "rapidfire-fingerprint.json").read_text() == '{"another": "toolchain"}'
    assert sorted(p.name for p in (wheel_build["src"] / "build").glob("cmake-*")) == [dev_tree.name]


def _glibc_symbols_newer_than(module: Path, limit: tuple[int, int]) -> list[str]:
    """`name@GLIBC_x.y` for each dynamic symbol `module` needs at a glibc version above `limit`."""
    out = subprocess.run(["objdump", "-T", str(module)], capture_output=True, text=True, check=True).stdout
    found = re.findall(r"\(?GLIBC_(\d+)\.(\d+)(?:\.\d+)?\)?\s+(\S+)$", out, re.MULTILINE)
    return sorted({f"{n}@GLIBC_{a}.{b}" for a, b, n in found if (int(a), int(b)) > limit})


def test_wheel_is_manylinux_2_28(wheel_build: dict) -> None:
    """auditwheel accepts the wheel for glibc 2.28 (RHEL 8, Ubuntu 20.04+) with nothing grafted in."""
    if shutil.which("objdump"):
        with zipfile.ZipFile(wheel_build["raw"]) as zf:
            (member,) = [n for n in zf.namelist() if n.startswith("rapidfire_core/_C")]
            module = Path(zf.extract(member, wheel_build["tmp"] / "unpacked"))
        # Names what to add to csrc/compat/glibc_pinned_symbols.def (auditwheel only says "too recent").
        assert _glibc_symbols_newer_than(module, (2, 28)) == []
    out = wheel_build["repair"]
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    (repaired,) = wheel_build["dist"].glob("rapidfire_core-*.whl")
    tags = repaired.name.removesuffix(".whl").split("-")[-1].split(".")
    assert "manylinux_2_28_x86_64" in tags, repaired.name
    with zipfile.ZipFile(repaired) as zf:
        names = zf.namelist()
    # Only libraries every manylinux system has: auditwheel grafts anything else into .libs/.
    assert not [n for n in names if ".libs/" in n], names


def test_wheel_names_variant_and_license(wheel_build: dict, info: dict) -> None:
    from rapidfire_core._version import BASE_VERSION

    wheel = wheel_build["raw"]
    version = wheel.name.split("-")[1]
    assert version == f"{BASE_VERSION}+{_expected_label(info)}", wheel.name  # same toolchain as the dev build
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = zf.read(f"rapidfire_core-{version}.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in meta
    assert f"rapidfire_core-{version}.dist-info/licenses/LICENSE" in names
    assert any(n.startswith("rapidfire_core/_C") and n.endswith(".so") for n in names), names
    assert "rapidfire_core/_native.py" in names
    assert not any(n.startswith(("csrc/", "python/", "tests/")) for n in names), names


def test_wheel_installs_and_reports_elsewhere(wheel_build: dict, info: dict) -> None:
    """Install the repaired wheel with --target, import it from another cwd after torch (whose own
    libstdc++ must not take over the module's statically linked one), and read its build facts."""
    target = wheel_build["tmp"] / "site"
    wheel = next(wheel_build["dist"].glob("rapidfire_core-*.whl"), wheel_build["raw"])
    _pip("install", "--no-deps", "--target", str(target), str(wheel), cwd=wheel_build["tmp"])
    code = (
        "import json, torch, rapidfire_core._C as c\n"
        "arena = c.HostArena(1 << 16)\n"
        "try:\n    arena.allocate(1 << 20)\nexcept c.ArenaExhaustedError as exc:\n    message = str(exc)\n"
        "print(json.dumps({'f': c.__file__, 'info': c.build_info(), 'message': message}))"
    )
    run_env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=wheel_build["tmp"], env=run_env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["f"].startswith(str(target)), result["f"]
    assert result["info"]["version"] == wheel.name.split("-")[1]
    assert result["info"]["cuda_compiled"] == info["cuda_compiled"]
    assert "1048576 bytes" in result["message"], result["message"]


def test_cibuildwheel_builds_cpython_310_to_313(tmp_path: Path) -> None:
    """The CI configuration in pyproject.toml selects CPython 3.10-3.13 manylinux x86_64 wheels."""
    pytest.importorskip("cibuildwheel")
    src = _copy_sources(tmp_path / "src")
    cmd = [sys.executable, "-m", "cibuildwheel", "--print-build-identifiers", "--platform", "linux"]
    out = subprocess.run(cmd, cwd=src, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-4000:]
    ids = out.stdout.split()
    assert ids == [f"cp3{minor}-manylinux_x86_64" for minor in (10, 11, 12, 13)], ids
    config = _pyproject()["tool"]["cibuildwheel"]
    assert config["manylinux-x86_64-image"] == "manylinux_2_28"
    assert "manylinux_2_28_x86_64" in config["linux"]["repair-wheel-command"]


@pytest.fixture(scope="module")
def setup_py():
    """setup.py's helpers (imported under another name, so that setup() itself does not run)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("rapidfire_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variant_follows_the_nvcc_a_build_finds(setup_py, tmp_path: Path, monkeypatch) -> None:
    nvcc = tmp_path / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.8, V12.8.93'\n")
    nvcc.chmod(0o755)
    monkeypatch.setenv("CUDACXX", str(nvcc))
    monkeypatch.setenv("RAPIDFIRE_CUDA", "auto")
    assert setup_py.build_variant() == ("cu128", nvcc)
    monkeypatch.setenv("RAPIDFIRE_CUDA", "0")
    assert setup_py.build_variant() == ("cpu", None)
    monkeypatch.setattr(setup_py, "find_nvcc", lambda: None)  # a machine without a toolkit
    assert setup_py.build_variant() == ("cpu", None)
    monkeypatch.setenv("RAPIDFIRE_CUDA", "auto")
    assert setup_py.build_variant() == ("cpu", None)
    monkeypatch.setenv("RAPIDFIRE_CUDA", "1")
    with pytest.raises(RuntimeError, match="no nvcc was found"):
        setup_py.build_variant()


def test_local_label_can_be_left_off_for_pypi(setup_py, monkeypatch) -> None:
    from rapidfire_core._version import BASE_VERSION

    monkeypatch.delenv("RAPIDFIRE_LOCAL_VERSION", raising=False)
    assert setup_py.package_version("cu128") == f"{BASE_VERSION}+cu128"
    monkeypatch.setenv("RAPIDFIRE_LOCAL_VERSION", "0")
    assert setup_py.package_version("cu128") == BASE_VERSION


def test_only_temporary_build_tools_get_a_throwaway_tree(setup_py, tmp_path: Path) -> None:
    import tempfile

    isolated = Path(tempfile.gettempdir()) / "build-env-abc" / "lib" / "pybind11" / "share" / "cmake"
    assert setup_py.build_tools_are_temporary(str(isolated), "/usr/bin/cmake")
    assert not setup_py.build_tools_are_temporary(str(ROOT / ".venv" / "pybind11"), "/usr/bin/cmake")
