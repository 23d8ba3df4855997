"""Connecting to Ray, and what one executor reserves there.

Ray is an optional dependency: nothing here imports it until an experiment asks for executors
(`Experiment(..., num_gpus=N)` with N >= 2, or `cluster=`), and then a missing Ray is one
clear ImportError naming the extra to install.

Where the executors run (`connect`):

    cluster=None, Ray not initialised  a local Ray started here for this process (`ray.init`),
                                       with the machine's GPUs (or `num_cpus` CPUs on a CPU box)
    cluster=None, ray.init() called    the Ray the user connected to (a cluster, or a local one)
    cluster="auto" / "ray://h:10001"   `ray.init(address=cluster)`: an existing cluster

What one executor is (`ExecutorShape`): one GPU (`num_gpus=1`) when the cluster has GPUs, else
a CPU "device" of `threads` CPUs (`num_cpus=threads`: torch uses that many intra-op threads in
it). CPU executors exist for tests and CPU-only clusters; they compute like one process.

Moving run state through the object store: tensors go by default through pickle, ~10x slower
than zero-copy (measured with ray 2.60 on a 2-core box: 256 MiB took 4-6 s put / 7-12 s get by
default, 0.4 / 0.2 s with zero-copy), so `RAY_ENABLE_ZERO_COPY_TORCH_TENSORS=1` is set for the
executors and this process unless the user set it. Zero-copy tensors arrive read-only: the
controller only writes them to files; an executor that receives run state writes it to files
too and loads from them (`run_host`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

RAY_MISSING = (
    "training on several executors (Experiment(num_gpus=N) with N >= 2, or cluster=...) needs Ray: "
    "pip install 'rapidfire_core[ray]'"
)
ZERO_COPY_ENV = "RAY_ENABLE_ZERO_COPY_TORCH_TENSORS"


def require_ray() -> Any:
    """The `ray` module, or ImportError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(RAY_MISSING) from exc
    return ray


@dataclass(frozen=True)
class ExecutorShape:
    """What each executor actor reserves: one GPU, or `threads` CPUs (a CPU device)."""

    count: int
    gpu: bool
    threads: int

    def actor_options(self) -> dict[str, Any]:
        """Ray actor options for one executor (its process gets the zero-copy switch too)."""
        env = {ZERO_COPY_ENV: os.environ.get(ZERO_COPY_ENV, "1")}
        resources = {"num_gpus": 1, "num_cpus": 1} if self.gpu else {"num_cpus": self.threads}
        return resources | {"runtime_env": {"env_vars": env}}

    @property
    def device(self) -> str:
        return "cuda" if self.gpu else "cpu"


def executors_requested(num_gpus: int | None, cluster: str | None) -> int | None:
    """How many executors `Experiment(num_gpus=, cluster=)` asks for; None: the single-device
    engine in the user's process (num_gpus None, 0 or 1 and no cluster)."""
    if cluster is not None and not isinstance(cluster, str):
        raise ValueError(
            f"cluster must be a Ray address string such as 'auto' or 'ray://host:10001', got {cluster!r}"
        )
    if num_gpus is not None and num_gpus >= 2:
        return num_gpus
    if cluster is not None:
        return max(num_gpus or 1, 1)
    return None


def connect(count: int, cluster: str | None, threads: int | None) -> ExecutorShape:
    """Connect to Ray (module docstring) and check that it can host `count` executors.

    threads: CPUs per CPU executor (default 1). ValueError when the cluster is too small: Ray
    would otherwise leave the extra actors pending forever."""
    ray = require_ray()
    os.environ.setdefault(ZERO_COPY_ENV, "1")
    if not ray.is_initialized():
        if cluster is not None:
            ray.init(address=cluster, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False, **_local_resources(count, threads))
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    shape = ExecutorShape(count, gpu=gpus > 0, threads=threads or 1)
    if shape.gpu and gpus < count:
        raise ValueError(f"num_gpus={count}: the Ray cluster has {gpus} GPU(s)")
    cpus = int(resources.get("CPU", 0))
    need = count * (1 if shape.gpu else shape.threads)
    if cpus < need:
        raise ValueError(
            f"{count} executor(s) of {shape.threads if not shape.gpu else 1} CPU(s) each need {need} CPUs; "
            f"the Ray cluster has {cpus}"
        )
    return shape


def _local_resources(count: int, threads: int | None) -> dict[str, Any]:
    """What a local Ray started for `count` executors announces: every GPU torch sees, or (no
    GPU) `count * threads` CPUs, so that the executors fit whatever the core count."""
    import torch

    if torch.cuda.is_available():
        return {"num_gpus": torch.cuda.device_count()}
    return {"num_cpus": count * (threads or 1)}


__all__ = ["RAY_MISSING", "ExecutorShape", "connect", "executors_requested", "require_ray"]
