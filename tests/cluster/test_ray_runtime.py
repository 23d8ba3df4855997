"""Which argument asks for executors, and the one error a missing Ray gives."""

from __future__ import annotations

import sys

import pytest

from rapidfire_core.cluster.ray_runtime import RAY_MISSING, ExecutorShape, executors_requested, require_ray


def test_num_gpus_two_or_more_or_a_cluster_asks_for_executors():
    assert executors_requested(None, None) is None
    assert executors_requested(1, None) is None
    assert executors_requested(0, None) is None
    assert executors_requested(4, None) == 4
    assert executors_requested(None, "auto") == 1
    assert executors_requested(3, "ray://head:10001") == 3
    with pytest.raises(ValueError, match="cluster must be a Ray address"):
        executors_requested(2, 5)


def test_without_ray_executors_fail_with_the_extra_to_install(monkeypatch, tmp_path):
    from rapidfire_core import Experiment

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ImportError, match=r"rapidfire_core\[ray\]"):
        require_ray()
    exp = Experiment("no-ray", experiment_path=tmp_path, verbose=False, num_gpus=2)
    with pytest.raises(ImportError) as caught:
        exp.controller  # noqa: B018 - the controller connects to Ray
    assert str(caught.value) == RAY_MISSING
    exp.end()
    # The single-device engine does not need Ray.
    Experiment("one-device", experiment_path=tmp_path, verbose=False).end()


def test_an_executor_reserves_one_gpu_or_its_cpu_threads():
    assert ExecutorShape(2, gpu=True, threads=1).actor_options()["num_gpus"] == 1
    cpu = ExecutorShape(2, gpu=False, threads=3).actor_options()
    assert cpu["num_cpus"] == 3 and "num_gpus" not in cpu
    assert cpu["runtime_env"]["env_vars"]["RAY_ENABLE_ZERO_COPY_TORCH_TENSORS"] in ("0", "1")
