"""A run's own training time restates TRL's end-of-train speed metrics."""

from __future__ import annotations

import time

import pytest

from rapidfire_core.trainers.run_clock import RunClock, own_runtime_metrics


def test_clock_counts_only_the_paused_seconds():
    clock = RunClock()
    clock.resume()  # its first turn: nothing waited
    time.sleep(0.05)
    clock.pause()
    time.sleep(0.1)  # another run's turn
    clock.pause()  # already paused: the pause keeps its start
    during = clock.waited()
    clock.resume()
    time.sleep(0.05)
    assert 0.1 <= during <= clock.waited() < 0.15


def test_train_runtime_becomes_the_runs_own_and_rates_follow():
    logs = {
        "train_runtime": 190.0,
        "train_samples_per_second": 1.0,
        "train_steps_per_second": 0.5,
        "epoch": 1.0,
    }
    out = own_runtime_metrics(logs, waited_seconds=125.0)
    assert out["train_runtime"] == 65.0 and out["train_wall_runtime"] == 190.0
    assert out["train_samples_per_second"] == pytest.approx(190 / 65, abs=1e-3)
    assert out["train_steps_per_second"] == pytest.approx(0.5 * 190 / 65, abs=1e-3)
    assert out["epoch"] == 1.0 and logs["train_runtime"] == 190.0


def test_logs_without_train_runtime_pass_unchanged():
    logs = {"loss": 1.2}
    assert own_runtime_metrics(logs, 3.0) is logs
