"""Objectives resolve, before training, on the names the sweep's runs will log."""

from __future__ import annotations

import pytest

from rapidfire_core.automl.metric_names import (
    RunMetricNames,
    probe_generation_metrics,
    resolve_objective_metric,
    sweep_metric_names,
)
from rapidfire_core.errors import ConfigError

ROWS = [{"prompt": "2+2?", "completion": "4"}, {"prompt": "3+3?", "completion": "6"}]


def rouge_and_bleu(eval_preds):
    predictions, references = eval_preds
    return {"rougeL": 1.0, "bleu": 1.0}


def test_generation_metrics_resolve_under_rapidfire_ai_names_and_our_old_eval_prefix():
    names = sweep_metric_names("SFT", [rouge_and_bleu, rouge_and_bleu], ROWS)
    assert names.generation == {"rougeL", "bleu"}
    assert resolve_objective_metric("rougeL", names) == "rougeL"
    assert resolve_objective_metric("eval_rougeL", names) == "rougeL"
    assert resolve_objective_metric("eval_loss", names) == "eval_loss"
    assert resolve_objective_metric("mean_token_accuracy", names) == "mean_token_accuracy"


def test_trainer_metrics_and_config_dependent_namespaces_resolve():
    dpo = RunMetricNames("DPO", has_eval=False)
    assert dpo.resolve("rewards/accuracies") == "rewards/accuracies"
    grpo = RunMetricNames("GRPO", has_eval=True)
    assert grpo.resolve("rewards/math_reward/mean") == "rewards/math_reward/mean"
    assert grpo.resolve("eval_reward") == "eval_reward"
    assert RunMetricNames("SFT", has_eval=False).resolve("eval_loss") is None


def test_an_objective_no_run_logs_is_refused_with_what_they_log():
    names = sweep_metric_names("SFT", [rouge_and_bleu], ROWS)
    with pytest.raises(ConfigError, match=r"'rougeLsum' cannot be computed.*did you mean 'rougeL'"):
        resolve_objective_metric("rougeLsum", names)
    without = sweep_metric_names("SFT", [None], ROWS)  # no compute_metrics: no generation metrics
    with pytest.raises(ConfigError, match="no run of this sweep logs a metric 'rougeL'"):
        resolve_objective_metric("rougeL", without)
    mixed = sweep_metric_names("SFT", [rouge_and_bleu, None], ROWS)  # one run would not log it
    assert mixed.resolve("rougeL") is None


def test_a_compute_metrics_that_fails_on_the_probe_is_named_in_the_refusal():
    def broken(eval_preds):
        raise KeyError("rouge")

    assert probe_generation_metrics(broken, ["a"]) == (frozenset(), "KeyError: 'rouge'")
    names = sweep_metric_names("SFT", [broken], ROWS)
    with pytest.raises(ConfigError, match="could not be probed for its names: KeyError"):
        resolve_objective_metric("rougeL", names)
