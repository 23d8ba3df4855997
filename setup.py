"""Build the compiled module ``rapidfire_core._C`` with CMake.

Package metadata lives in ``pyproject.toml``; this file adds the one extension, a ``build_ext``
that runs ``cmake`` (configure + build) and leaves the module where setuptools expects it, and the
version: ``rapidfire_core/_version.py``'s BASE_VERSION plus the build variant as a local label.

Build variants (docs/install.md): ``cpu`` (no CUDA code) or ``cu<major><minor>`` (CUDA code paths
with the CUDA runtime linked statically: the wheel needs only an NVIDIA driver, and loads and runs
its CPU paths without one). The variant is decided here, before CMake runs, so that the version
(``0.1.0+cu130``) names what is compiled in.

Environment knobs:
    RAPIDFIRE_CUDA=0|1|auto   CPU-only build / require CUDA / CUDA if nvcc is found (default)
    RAPIDFIRE_LOCAL_VERSION=0 no ``+variant`` label (a PyPI upload; PyPI refuses local labels)
    RAPIDFIRE_BUILD_DIR=DIR   CMake build tree (default: build/cmake-<python>-<variant> for builds
                              with the developer's own build tools, a temporary one under pip's or
                              build's isolation)
    CUDACXX=PATH              the nvcc to use (default: PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)
    CMAKE_ARGS="-D..."        extra arguments for the configure step
    CMAKE_BUILD_PARALLEL_LEVEL=N  compile jobs (default: CPU count, at most 8)
    CMAKE_GENERATOR=...       CMake generator (default: Ninja when available)
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
NATIVE_GLOBS = (
    "csrc/**/*.h",
    "csrc/**/*.def",
    "csrc/**/*.cuh",
    "csrc/**/*.cpp",
    "csrc/**/*.cu",
    "python/*.h",
    "python/*.cpp",
)


def native_sources() -> list[str]:
    """Every file the CMake build reads, relative to the project root.

    They are the extension's ``sources`` so that an sdist carries them (setuptools
    adds extension sources to the sdist); CMake, not setuptools, compiles them.
    """
    files = {"CMakeLists.txt"}
    for pattern in NATIVE_GLOBS:
        files.update(p.relative_to(ROOT).as_posix() for p in ROOT.glob(pattern))
    return sorted(files)


def cuda_mode() -> str:
    """Map ``RAPIDFIRE_CUDA`` to AUTO, ON or OFF."""
    value = os.environ.get("RAPIDFIRE_CUDA", "auto").strip().lower()
    if value in ("0", "off", "false", "no"):
        return "OFF"
    if value in ("1", "on", "true", "yes", "required"):
        return "ON"
    if value in ("", "auto"):
        return "AUTO"
    raise ValueError(f"RAPIDFIRE_CUDA={value!r}: expected 0, 1 or auto")


def find_nvcc() -> Path | None:
    """The CUDA compiler a build would use: $CUDACXX, PATH, $CUDA_HOME/bin, /usr/local/cuda/bin."""
    if os.environ.get("CUDACXX"):
        return Path(os.environ["CUDACXX"])
    on_path = shutil.which("nvcc")
    if on_path:
        return Path(on_path)
    homes = [os.environ.get(v) for v in ("CUDA_HOME", "CUDA_PATH")] + ["/usr/local/cuda"]
    for home in filter(None, homes):
        candidate = Path(home) / "bin" / "nvcc"
        if candidate.exists():
            return candidate
    return None


def nvcc_release(nvcc: Path) -> tuple[int, int]:
    """(major, minor) of ``nvcc --version`` ("Cuda compilation tools, release 13.0, V13.0.88")."""
    out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"release (\d+)\.(\d+)", out)
    if match is None:
        raise RuntimeError(f"cannot read the CUDA release from `{nvcc} --version`:\n{out}")
    return int(match.group(1)), int(match.group(2))


def build_variant() -> tuple[str, Path | None]:
    """("cpu", None) or ("cu130", path to nvcc): what this build compiles, from RAPIDFIRE_CUDA."""
    mode = cuda_mode()
    if mode == "OFF":
        return "cpu", None
    nvcc = find_nvcc()
    if nvcc is None:
        if mode == "ON":
            raise RuntimeError("RAPIDFIRE_CUDA=1 but no nvcc was found (set CUDACXX or put nvcc on PATH)")
        return "cpu", None
    major, minor = nvcc_release(nvcc)
    return f"cu{major}{minor}", nvcc


def base_version() -> str:
    """BASE_VERSION from rapidfire_core/_version.py, read as text (the package is not importable yet)."""
    text = (ROOT / "rapidfire_core" / "_version.py").read_text()
    match = re.search(r'^BASE_VERSION = "([^"]+)"', text, re.MULTILINE)
    if match is None:
        raise RuntimeError("rapidfire_core/_version.py has no BASE_VERSION")
    return match.group(1)


def package_version(variant: str) -> str:
    """``0.1.0+cu130``: the release plus the variant, unless RAPIDFIRE_LOCAL_VERSION=0."""
    if os.environ.get("RAPIDFIRE_LOCAL_VERSION", "1").strip().lower() in ("0", "off", "false", "no"):
        return base_version()
    return f"{base_version()}+{variant}"


COMPILER_HINT = (
    "building rapidfire_core from source needs a C++17 compiler (GCC >= 9 or Clang >= 10): "
    "`apt-get install g++` (Debian/Ubuntu) or `dnf install gcc-c++` (RHEL/Fedora), or set CXX. "
    "Or skip the build: `pip install --only-binary rapidfire_core rapidfire_core` takes a prebuilt "
    "wheel (Linux x86_64, CPython 3.10-3.13; see docs/install.md)"
)


def find_cxx_compiler() -> str:
    """The C++ compiler CMake will pick ($CXX, else c++/g++/clang++ on PATH); raises with what to install."""
    if os.environ.get("CXX"):
        name = shlex.split(os.environ["CXX"])[0]
        found = shutil.which(name)
        if found is None:
            raise RuntimeError(f"CXX={os.environ['CXX']!r} is not an executable; {COMPILER_HINT}")
        return found
    for name in ("c++", "g++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(f"no C++ compiler found (CXX unset; no c++, g++ or clang++ on PATH); {COMPILER_HINT}")


def find_cmake() -> str:
    """The ``cmake`` PyPI package when installed (build isolation), else ``cmake`` on PATH."""
    try:
        import cmake  # type: ignore[import-not-found]

        candidate = Path(cmake.CMAKE_BIN_DIR) / "cmake"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("cmake")
    if found is None:
        raise RuntimeError("building rapidfire_core._C needs CMake >= 3.18: pip install cmake")
    return found


def find_ninja() -> str | None:
    """A ninja executable (PyPI package or PATH), or None to use CMake's default generator."""
    try:
        import ninja  # type: ignore[import-not-found]

        candidate = Path(ninja.BIN_DIR) / "ninja"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    return shutil.which("ninja")


def build_tools_are_temporary(*tool_paths: str) -> bool:
    """True when pybind11 or cmake come from a temporary directory: an isolated build env.

    pip's isolation (/tmp/pip-build-env-*) and `python -m build`'s (/tmp/build-env-*, a venv, so
    its sys.prefix is temporary too) both live under the temp dir; the developer's venv does not.
    """
    temp = Path(tempfile.gettempdir()).resolve()
    # A tool inside this source tree (its .venv) is the developer's, even in a clone under /tmp.
    tree = Path(__file__).resolve().parent
    paths = [Path(p).resolve() for p in tool_paths]
    return any(p.is_relative_to(temp) and not p.is_relative_to(tree) for p in paths)


class CMakeExtension(Extension):
    """An extension whose sources CMake compiles (see CMakeLists.txt)."""

    def __init__(self, name: str) -> None:
        super().__init__(name, sources=native_sources())


class CMakeBuild(build_ext):
    """``build_ext`` that configures and builds the CMake project."""

    def build_extension(self, ext: Extension) -> None:
        import pybind11

        target = Path(self.get_ext_fullpath(ext.name)).resolve()
        config = "Debug" if self.debug else "Release"
        variant, nvcc = build_variant()
        cxx = find_cxx_compiler()
        cmake = find_cmake()
        throwaway = build_tools_are_temporary(pybind11.get_cmake_dir(), cmake)

        # Arguments that pin the build tree: when one changes, start from scratch.
        toolchain = [
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_CXX_COMPILER={cxx}",
            f"-DRAPIDFIRE_CUDA={'OFF' if nvcc is None else 'ON'}",
        ]
        if nvcc is not None:
            toolchain.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
        generator = os.environ.get("CMAKE_GENERATOR")
        ninja = None if generator else find_ninja()
        if ninja:
            toolchain += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        toolchain += shlex.split(os.environ.get("CMAKE_ARGS", ""))

        # Arguments CMake takes in stride on an existing tree.
        configure = [
            *toolchain,
            f"-DRAPIDFIRE_VERSION={self.distribution.get_version()}",
            f"-DRAPIDFIRE_OUTPUT_DIR={target.parent}",
            f"-DCMAKE_BUILD_TYPE={config}",
        ]
        default_jobs = self.parallel or min(os.cpu_count() or 1, 8)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(default_jobs)

        def configure_and_build(build_dir: str) -> None:
            self._run([cmake, "-S", str(ROOT), "-B", build_dir, *configure])
            self._run([cmake, "--build", build_dir, "--config", config, "-j", jobs])

        if os.environ.get("RAPIDFIRE_BUILD_DIR") or not throwaway:
            build_dir = self._developer_build_dir(variant)
            self._reset_if_stale(build_dir, {"cmake": cmake, "generator": generator, "args": toolchain})
            configure_and_build(str(build_dir))
        else:
            # Build tools in a throwaway env (pip's or build's isolation): a throwaway tree too,
            # outside the source tree, so the developer's incremental build/ is never touched.
            with tempfile.TemporaryDirectory(prefix="rapidfire-cmake-") as tmp:
                configure_and_build(tmp)

        if not target.exists():
            raise RuntimeError(
                f"CMake finished but {target.name} is not in {target.parent}; "
                f"expected suffix {sysconfig.get_config_var('EXT_SUFFIX')}"
            )

    @staticmethod
    def _developer_build_dir(variant: str) -> Path:
        """The incremental CMake tree: $RAPIDFIRE_BUILD_DIR or build/cmake-<python>-<variant>."""
        if os.environ.get("RAPIDFIRE_BUILD_DIR"):
            return Path(os.environ["RAPIDFIRE_BUILD_DIR"]).resolve()
        return ROOT / "build" / f"cmake-{sys.implementation.cache_tag}-{variant}"

    @staticmethod
    def _reset_if_stale(build_dir: Path, fingerprint: dict[str, object]) -> None:
        """Wipe the build tree when the tools that made it changed.

        CMake cannot switch compiler, generator or CUDA mode inside an existing tree, and a
        cache pointing at a cmake or pybind11 that is gone would fail to regenerate.
        """
        stamp = build_dir / "rapidfire-fingerprint.json"
        text = json.dumps(fingerprint, sort_keys=True)
        if build_dir.exists() and (not stamp.exists() or stamp.read_text() != text):
            shutil.rmtree(build_dir)
        build_dir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(text)

    @staticmethod
    def _run(cmd: list[str]) -> None:
        print("+", shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import its helpers
    setup(
        version=package_version(build_variant()[0]),
        ext_modules=[CMakeExtension("rapidfire_core._C")],
        cmdclass={"build_ext": CMakeBuild},
    )
