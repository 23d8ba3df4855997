"""The trainer counters a chunk checkpoint keeps (the crash-resume tests check them end to end)."""

from __future__ import annotations

import inspect
import json
from collections import defaultdict

import pytest
import trl

from rapidfire_core.scheduler.run_checkpoint import (
    TRAINER_COUNTERS,
    restore_trainer_counters,
    trainer_counters,
)


class _Trainer:
    def __init__(self) -> None:
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._total_train_tokens = 0
        self._initial_global_step = 0
        self.current_flos = 0.0


def test_counters_and_half_filled_metric_lists_come_back_exactly():
    import torch

    trained = _Trainer()
    trained._total_train_tokens = 1604
    trained._initial_global_step = 0
    trained.current_flos = 3.5e9
    trained._metrics["train"]["mean_token_accuracy"] += [0.25, torch.tensor(0.5).item()]
    trained._metrics["train"]["num_tokens"] = [torch.tensor(1604)]
    saved = json.loads(json.dumps(trainer_counters(trained)))  # as engine.json holds them

    rebuilt = _Trainer()
    rebuilt._initial_global_step = 8  # what a resumed train() sets
    rebuilt._metrics["train"]["stale"].append(1.0)
    train_lists = rebuilt._metrics["train"]
    restore_trainer_counters(rebuilt, saved)
    assert rebuilt._total_train_tokens == 1604 and rebuilt._initial_global_step == 0
    assert rebuilt.current_flos == 3.5e9
    assert rebuilt._metrics["train"] == {"mean_token_accuracy": [0.25, 0.5], "num_tokens": [1604]}
    assert rebuilt._metrics["train"] is train_lists  # the trainer's own defaultdict, still appendable
    rebuilt._metrics["train"]["entropy"].append(1.0)
    assert not hasattr(rebuilt, "_step")  # a counter the trainer lacks is neither captured nor made


@pytest.mark.parametrize("trainer", [trl.SFTTrainer, trl.DPOTrainer, trl.GRPOTrainer])
def test_the_trl_trainers_still_keep_their_counters_under_these_names(trainer):
    # If TRL renames a counter, the checkpoint would silently stop keeping it: fail here instead.
    source = inspect.getsource(trainer)
    assert "self._total_train_tokens" in source and "self._metrics[mode]" in source
    if trainer is trl.GRPOTrainer:
        assert "self._step += 1" in source and "self._pending_metrics" in source
    assert all(name.isidentifier() for name in TRAINER_COUNTERS)


def test_transformers_still_computes_train_loss_from_these_names():
    import transformers

    source = inspect.getsource(transformers.Trainer)
    for name in ("_initial_global_step", "_total_loss_scalar", "current_flos", "_globalstep_last_logged"):
        assert f"self.{name}" in source, name
