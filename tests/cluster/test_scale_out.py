"""Sweeps on 2 executors (Ray actors of one CPU each, driven by the one run controller) give
the numbers of the same sweep in one process: wherever each run trains, however often it moves,
after an executor is killed."""

from __future__ import annotations

import pytest

from tests.cluster import sweeps



def _one_process(root, name, group, **kwargs) -> dict:
    exp = sweeps.fit(root, name, group, **kwargs)
    try:
        return sweeps.outcome(exp)
    finally:
        exp.end()


@pytest.fixture(scope="module")
def reference_four(tmp_path_factory, tiny_model_dir):
    """`sweeps.sft_four` trained fused in this process (the single-device engine)."""
    root = tmp_path_factory.mktemp("one-process")
    return _one_process(root, "four", sweeps.sft_four(tiny_model_dir), execution="auto")


def test_four_run_sweep_on_two_executors_equals_one_process(local_ray, tmp_path, tiny_model_dir, reference_four):
    # The runs may fuse: each executor holds two and trains them as a fused cohort.
    exp = sweeps.fit(tmp_path, "four-ray", sweeps.sft_four(tiny_model_dir), num_gpus=2, execution="auto")
    try:
        assert exp.controller.fused_steps >= 6  # each cohort's steps fused its two runs
        assert {e.index for e in exp.controller.executors} == {0, 1}
        sweeps.assert_same_numbers(sweeps.outcome(exp), reference_four)
        sweeps.assert_mlflow_once(exp)
    finally:
        exp.end()
