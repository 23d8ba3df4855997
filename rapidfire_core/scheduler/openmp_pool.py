"""A thread gives back its OpenMP worker threads before it waits, so only the computing thread
has a team.

torch's CPU kernels run their parallel regions on OpenMP. libgomp (the runtime torch's Linux
wheels ship) keeps a pool of worker threads for every thread that ran a parallel region, until
that thread exits. While the process holds more OpenMP threads than CPUs, every team's workers
stop spin-waiting between regions (libgomp's throttled spin count: ~1000 spins instead of
300,000) and sleep at once; each of the thousands of small parallel regions of a training step
then waits for its workers to be woken. The engine trains each run in its own thread (and fused
cohorts in a compute thread), one at a time: the pools of the paused ones made the training
thread's ops ~1.5x slower on the 2-core dev machine, with torch's default thread count.
`benchmarks/bench_openmp_pools.py` measures it.

`release_openmp_workers()` calls OpenMP 5.0's ``omp_pause_resource_all(omp_pause_soft)``:
libgomp frees the calling thread's pool (its workers exit) and nothing else; the thread's next
parallel region starts a new one (one thread start per worker, microseconds). The engine calls
it wherever a thread that may have computed hands the turn to another (`worker.RunWorker`,
`cohort.ComputeThread`). Where torch's OpenMP is not libgomp (macOS, Windows, Intel OpenMP
builds) or libgomp predates the pause API, it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import re

logger = logging.getLogger(__name__)

_OMP_PAUSE_SOFT = 1  # omp_pause_resource_t: omp_pause_soft
# libgomp only (torch's Linux wheels, e.g. torch/lib/libgomp.so.1 or torch.libs/libgomp-<hash>.so):
# there the pause frees the calling thread's pool and nothing else. The Intel and LLVM runtimes
# pause the whole runtime, which another thread may be using at that moment.
_RUNTIME_NAME = re.compile(r"/libgomp[^/]*\.so[^/]*$")


def _loaded_runtime_paths() -> list[str]:
    """The libgomp libraries mapped into this process (Linux: /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as maps:
            lines = maps.read().splitlines()
    except OSError:
        return []
    paths = []
    for line in lines:
        fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
        path = fields[5] if len(fields) == 6 else ""
        if _RUNTIME_NAME.search(path) and path not in paths and os.path.exists(path):
            paths.append(path)
    return paths


@functools.cache
def _pause_functions() -> tuple:
    """``omp_pause_resource_all`` of every loaded libgomp (found once: torch loads its runtime
    when it is imported, before any engine thread exists)."""
    import torch  # noqa: F401 - loads torch's OpenMP runtime, whose threads are the ones to free

    functions = []
    for path in _loaded_runtime_paths():
        try:
            library = ctypes.CDLL(path)  # the loaded library itself, not a second copy
            pause = library.omp_pause_resource_all
        except (OSError, AttributeError):
            continue
        pause.argtypes = [ctypes.c_int]
        pause.restype = ctypes.c_int
        functions.append(pause)
    if not functions:
        logger.debug("no libgomp with omp_pause_resource_all is loaded")
    return tuple(functions)


def release_openmp_workers() -> None:
    """Free the calling thread's OpenMP worker threads (a no-op if it has none, or if no libgomp
    with the pause API is loaded). Call it outside any parallel region: in Python code
    between torch ops, which is everywhere Python runs."""
    for pause in _pause_functions():
        pause(_OMP_PAUSE_SOFT)


def openmp_runtime_loaded() -> bool:
    """Whether `release_openmp_workers` has a runtime to act on."""
    return bool(_pause_functions())
