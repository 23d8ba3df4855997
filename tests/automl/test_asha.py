"""Successive halving at chunk ends: rung logic on stores, and end to end on the tiny model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rapidfire_core import Experiment
from rapidfire_core.automl import List, RFLoraConfig, RFModelConfig, RFSFTConfig, RFSuccessiveHalving
from rapidfire_core.automl.asha import SuccessiveHalvingPolicy
from rapidfire_core.automl.objective import MissingObjective, Objective
from rapidfire_core.control import CommandStore, RunStatus, RunStore
from rapidfire_core.control.run_store import MetricRecord
from rapidfire_core.demo.data import formatting_function, support_dataset
from rapidfire_core.errors import ConfigError


class _Sweep:
    """Stores with runs whose eval_loss per chunk the test writes, as the engine would."""

    def __init__(self, tmp_path, n_runs, objective="minimize:eval_loss", rf=2, grace=1, max_rungs=None):
        self.store = RunStore(tmp_path / "runs.db")
        self.commands = CommandStore(tmp_path / "runs.db")
        self.controller = SimpleNamespace(store=self.store, commands=self.commands)
        self.ids = [self.store.create_run(f"r{i}", "SFT", {}) for i in range(n_runs)]
        for run_id in self.ids:
            self.store.update_run(run_id, status=RunStatus.ONGOING)
        self.policy = SuccessiveHalvingPolicy(Objective.parse(objective), grace, rf, max_rungs)
        self.policy.start(self.ids)

    def chunk(self, values: dict[int, float], name="eval_loss") -> None:
        """Each run in `values` completes one more chunk and logs `name` there."""
        for run_id, value in values.items():
            chunk = self.store.get_run(run_id)["chunks_done"] + 1
            self.store.log_metric_records([MetricRecord(run_id, chunk * 10, None, chunk, {name: value})])
            self.store.update_run(run_id, chunks_done=chunk)

    def round_end(self, round_number=1) -> list[int]:
        """Run ids the policy stopped in this round (and mark them STOPPED as the controller would)."""
        before = {c.command_id for c in self.commands.all()}
        self.policy.round_end(self.controller, round_number)
        stopped = []
        for c in self.commands.all():
            if c.command_id not in before:
                assert (c.op, c.source) == ("stop", "automl")
                self.store.update_run(c.run_id, status=RunStatus.STOPPED)
                stopped.append(c.run_id)
        return stopped


def test_each_rung_keeps_the_best_fraction_of_what_was_recorded(tmp_path):
    sweep = _Sweep(tmp_path, 4)
    a, b, c, d = sweep.ids
    sweep.chunk({a: 3.0, b: 1.0, c: 2.0, d: 4.0})
    assert sorted(sweep.round_end()) == [a, d]  # rung 1 (chunk 1): the 2 best of 4 go on
    sweep.chunk({b: 0.9, c: 0.8})
    assert sweep.round_end(2) == [b]  # rung 2 (chunk 2): the best of 2
    sweep.chunk({c: 0.7})
    assert sweep.round_end(3) == []  # chunk 3 is no rung (1, 2, 4, ...)


def test_ties_with_the_cutoff_go_on_and_maximize_ranks_high_values_first(tmp_path):
    sweep = _Sweep(tmp_path, 4, objective="maximize:rewards/accuracies")
    a, b, c, d = sweep.ids
    sweep.chunk({a: 0.5, b: 0.75, c: 0.75, d: 0.25}, name="rewards/accuracies")
    assert sorted(sweep.round_end()) == [a, d]
    sweep2 = _Sweep(tmp_path / "ties", 3)
    x, y, z = sweep2.ids
    sweep2.chunk({x: 1.0, y: 1.0, z: 1.0})
    assert sweep2.round_end() == []  # k = 1 and every value ties with the best


def test_late_arrivals_are_judged_against_everything_recorded_at_the_rung(tmp_path):
    sweep = _Sweep(tmp_path, 2)
    a, b = sweep.ids
    sweep.chunk({a: 1.0, b: 2.0})
    assert sweep.round_end() == [b]
    # a clone made by hand (child of a) joins later and reaches rung 1 in a later round
    clone = sweep.store.create_run("clone", "SFT", {}, parent_run_id=a)
    sweep.store.update_run(clone, status=RunStatus.ONGOING)
    sweep.chunk({a: 0.9})
    sweep.round_end(2)
    sweep.chunk({clone: 1.5})  # worse than 1 of the 3 values at rung 1 (k = 1): stopped
    assert sweep.round_end(3) == [clone]
    # a run the user resumed is not judged again at the rung it was stopped at
    sweep.store.update_run(b, status=RunStatus.ONGOING)
    assert sweep.round_end(4) == []


def test_runs_that_finish_before_a_rung_are_not_judged_there_but_count_at_earlier_ones(tmp_path):
    sweep = _Sweep(tmp_path, 4)
    a, b, c, d = sweep.ids
    sweep.chunk({a: 1.0, b: 2.0, c: 3.0, d: 4.0})
    assert sorted(sweep.round_end()) == [c, d]
    sweep.store.update_run(a, status=RunStatus.COMPLETED)  # its max_steps end inside chunk 2
    sweep.chunk({b: 5.0})
    assert sweep.round_end(2) == []  # alone at rung 2: a never got there, b is not held to it
    late = sweep.store.create_run("late", "SFT", {}, parent_run_id=b)  # e.g. a cold clone by hand
    sweep.store.update_run(late, status=RunStatus.ONGOING)
    sweep.chunk({late: 2.5})  # rung 1 holds 1, 2, 3, 4 and now 2.5: k = 2, the cutoff is 2.0
    assert sweep.round_end(3) == [late]


def test_a_run_that_logged_nothing_in_a_rung_chunk_is_judged_by_its_last_value_before_it(tmp_path):
    sweep = _Sweep(tmp_path, 2)
    a, b = sweep.ids
    sweep.chunk({a: 1.0, b: 2.0})
    sweep.store.update_run(b, status=RunStatus.COMPLETED)  # b stays as a standard at rung 1
    sweep.round_end()
    # a's trainer dropped every row of chunk 2: it completes chunk 2 with chunk 1, logging nothing
    sweep.store.update_run(a, chunks_done=2)
    assert sweep.round_end(2) == []
    assert sweep.policy.recorded[2] == {a: 1.0}


def test_a_missing_objective_names_the_metric_and_what_was_logged(tmp_path):
    sweep = _Sweep(tmp_path, 1)
    sweep.chunk({sweep.ids[0]: 1.0}, name="loss")
    with pytest.raises(
        MissingObjective,
        match=r"'eval_loss' was not logged by run 1 by the end of chunk 1; it logged \['loss'\]",
    ):
        sweep.round_end()


def test_bad_settings_are_refused_up_front(tiny_model_dir):
    cfg = RFModelConfig(model_name=tiny_model_dir, training_args=RFSFTConfig())
    with pytest.raises(ConfigError, match="reduction_factor must be an int >= 2"):
        RFSuccessiveHalving(cfg, reduction_factor=1)
    with pytest.raises(ConfigError, match="expected 'minimize:<metric>'"):
        RFSuccessiveHalving(cfg, objective="lowest:eval_loss")
    with pytest.raises(ConfigError, match="pass an eval_dataset"):
        RFSuccessiveHalving(cfg).search_policy().check(has_eval=False)


def test_bad_configs_are_stopped_at_the_first_rung_and_good_ones_complete(
    tmp_path, tiny_model_dir, create_tiny_model
):
    # A bad config first: runs reaching a rung in the same round are judged together.
    config = RFModelConfig(
        model_name=tiny_model_dir,
        peft_config=RFLoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
        training_args=RFSFTConfig(learning_rate=List([1e-7, 5e-3, 1e-8, 3e-3]), per_device_train_batch_size=2,
                                  max_length=64, max_steps=8, logging_steps=1),
        formatting_func=formatting_function,
    )  # fmt: skip
    search = RFSuccessiveHalving(config, trainer_type="SFT", objective="minimize:eval_loss", max_rungs=1)
    exp = Experiment("asha", experiment_path=tmp_path, verbose=False)
    exp.run_fit(
        search, create_tiny_model, support_dataset(n=16, seed=3), support_dataset(n=4, seed=9), num_chunks=4
    )
    info = exp.get_runs_info().set_index("run_id")
    assert info["status"].to_dict() == {1: "STOPPED", 2: "COMPLETED", 3: "STOPPED", 4: "COMPLETED"}
    assert info.loc[[1, 3], "global_step"].tolist() == [2, 2]  # stopped right after chunk 1
    commands = exp.get_commands()
    assert commands[["op", "run_id", "source", "status"]].values.tolist() == [
        ["stop", 1, "automl", "applied"], ["stop", 3, "automl", "applied"]]  # fmt: skip
    exp.end()
