"""One local Ray for the cluster tests of this session (starting one takes 14-22 s and ~465 MB
on the 2-core dev machine; each executor actor ~340 MB): two CPUs, so two executors of one
thread."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def local_ray():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def no_executor_outlives_its_test(monkeypatch):
    """Every executor a test started ends with it, even when the test fails before `exp.end()`:
    executors left running would hold the session's two CPUs and starve the next tests."""
    from rapidfire_core.cluster import ray_executor

    made = []
    original = ray_executor.RayExecutor.__init__

    def init(self, *args, **kwargs):
        made.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(ray_executor.RayExecutor, "__init__", init)
    yield
    for executor in made:
        if hasattr(executor, "actor"):
            executor.close()
