"""Build the compiled module ``rapidfire_core._C`` with CMake.

All package metadata lives in ``pyproject.toml``; this file only adds the one
extension and a ``build_ext`` that runs ``cmake`` (configure + build) and leaves
the module where setuptools expects it (``pip install -e .`` then copies it into
``rapidfire_core/`` in the source tree).

Environment knobs:
    RAPIDFIRE_CUDA=0|1|auto   CPU-only build / require CUDA / CUDA if nvcc is found (default)
    RAPIDFIRE_BUILD_DIR=DIR   CMake build tree (default: build/cmake-<python>-<cuda mode>)
    CMAKE_ARGS="-D..."        extra arguments for the configure step
    CMAKE_BUILD_PARALLEL_LEVEL=N  compile jobs (default: CPU count, at most 8)
    CMAKE_GENERATOR=...       CMake generator (default: Ninja when available)
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
NATIVE_GLOBS = ("csrc/**/*.h", "csrc/**/*.cuh", "csrc/**/*.cpp", "csrc/**/*.cu", "python/*.h", "python/*.cpp")


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
    """Map ``RAPIDFIRE_CUDA`` to the CMake option value AUTO, ON or OFF."""
    value = os.environ.get("RAPIDFIRE_CUDA", "auto").strip().lower()
    if value in ("0", "off", "false", "no"):
        return "OFF"
    if value in ("1", "on", "true", "yes", "required"):
        return "ON"
    if value in ("", "auto"):
        return "AUTO"
    raise ValueError(f"RAPIDFIRE_CUDA={value!r}: expected 0, 1 or auto")


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
        mode = cuda_mode()
        cmake = find_cmake()
        build_dir = self._build_dir(mode)

        # Arguments that pin the build tree: when one changes, start from scratch.
        toolchain = [
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DRAPIDFIRE_CUDA={mode}",
        ]
        generator = os.environ.get("CMAKE_GENERATOR")
        ninja = None if generator else find_ninja()
        if ninja:
            toolchain += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        toolchain += shlex.split(os.environ.get("CMAKE_ARGS", ""))
        self._reset_if_stale(build_dir, {"cmake": cmake, "generator": generator, "args": toolchain})

        # Arguments CMake takes in stride on an existing tree.
        configure = [
            *toolchain,
            f"-DRAPIDFIRE_VERSION={self.distribution.get_version()}",
            f"-DRAPIDFIRE_OUTPUT_DIR={target.parent}",
            f"-DCMAKE_BUILD_TYPE={config}",
        ]
        self._run([cmake, "-S", str(ROOT), "-B", str(build_dir), *configure])

        default_jobs = self.parallel or min(os.cpu_count() or 1, 8)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(default_jobs)
        self._run([cmake, "--build", str(build_dir), "--config", config, "-j", jobs])

        if not target.exists():
            raise RuntimeError(
                f"CMake finished but {target.name} is not in {target.parent}; "
                f"expected suffix {sysconfig.get_config_var('EXT_SUFFIX')}"
            )

    def _build_dir(self, mode: str) -> Path:
        """The CMake build tree: kept under build/ so rebuilds are incremental.

        Under pip's build isolation pybind11 and cmake live in a throwaway env, so
        nothing carries over; such builds use setuptools' own temp dir and leave the
        developer's incremental tree alone.
        """
        import pybind11

        if os.environ.get("RAPIDFIRE_BUILD_DIR"):
            return Path(os.environ["RAPIDFIRE_BUILD_DIR"]).resolve()
        isolated = not Path(pybind11.get_cmake_dir()).resolve().is_relative_to(Path(sys.prefix).resolve())
        if isolated:
            return Path(self.build_temp).resolve() / "cmake"
        return ROOT / "build" / f"cmake-{sys.implementation.cache_tag}-cuda{mode.lower()}"

    @staticmethod
    def _reset_if_stale(build_dir: Path, fingerprint: dict[str, object]) -> None:
        """Wipe the build tree when the tools that made it changed.

        Under pip's build isolation, cmake and pybind11 live in a temporary env that
        is gone by the next build; a cache pointing there would fail to regenerate.
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


setup(ext_modules=[CMakeExtension("rapidfire_core._C")], cmdclass={"build_ext": CMakeBuild})
