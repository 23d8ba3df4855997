"""RapidFire AI's resource arguments: honoured where they mean something, warned about once where not."""

from __future__ import annotations

import warnings

import pytest
import torch

from rapidfire_core.automl.translate import assume_gpu
from rapidfire_core.errors import ConfigTranslationWarning
from rapidfire_core.fit import arguments


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(arguments, "_warned", set())


def _messages(call) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in caught if issubclass(w.category, ConfigTranslationWarning)]


def test_num_gpus_matching_the_one_device_is_silent():
    with assume_gpu(False):
        assert _messages(lambda: arguments.check_num_gpus(0, "Experiment")) == []
    with assume_gpu(True):
        assert _messages(lambda: arguments.check_num_gpus(1, "run_fit")) == []


def test_num_gpus_with_no_meaning_warns_once_per_value():
    with assume_gpu(False):
        first = _messages(lambda: arguments.check_num_gpus(1, "run_fit"))
        again = _messages(lambda: arguments.check_num_gpus(1, "run_fit"))
    with assume_gpu(True):
        four = _messages(lambda: arguments.check_num_gpus(4, "Experiment"))
    assert first == [
        "run_fit(num_gpus=1) has no effect: rapidfire_core trains every run on the CPU (no usable GPU)"
    ]
    assert again == []
    assert four == [
        "Experiment(num_gpus=4) has no effect: rapidfire_core trains every run on one GPU (cuda:0)"
    ]


def test_monte_carlo_simulations_warns_once():
    first = _messages(lambda: arguments.check_monte_carlo_simulations(500))
    assert len(first) == 1 and "monte_carlo_simulations=500) has no effect" in first[0]
    assert _messages(lambda: arguments.check_monte_carlo_simulations(500)) == []
    assert _messages(lambda: arguments.check_monte_carlo_simulations(None)) == []


@pytest.mark.parametrize(
    "call, named",
    [
        (lambda: arguments.check_num_cpus(0), "num_cpus"),
        (lambda: arguments.check_num_cpus(1.5), "num_cpus"),
        (lambda: arguments.check_num_gpus(-1, "run_fit"), "run_fit(num_gpus=)"),
        (lambda: arguments.check_monte_carlo_simulations(0), "monte_carlo_simulations"),
    ],
)
def test_bad_values_are_refused_naming_the_argument(call, named):
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)")):
        call()


def test_cpu_threads_sets_and_restores_torch_threads():
    before = torch.get_num_threads()
    with arguments.cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with arguments.cpu_threads(None):
        assert torch.get_num_threads() == before
