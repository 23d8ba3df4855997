"""Population-based training: the bottom of the population is replaced by warm clones of the top."""

from __future__ import annotations

import pytest

from rapidfire_core import Experiment
from rapidfire_core.automl import List, Range, RFLoraConfig, RFModelConfig, RFPopulationBased, RFSFTConfig
from rapidfire_core.automl.objective import Objective
from rapidfire_core.automl.pbt import PopulationBasedPolicy
from rapidfire_core.demo.data import formatting_function, support_dataset
from rapidfire_core.errors import ConfigError


def _policy(mutations, resample=0.0, seed=0):
    return PopulationBasedPolicy(Objective.parse("eval_loss"), 1, 0.25, mutations, resample, seed)


def test_mutations_perturb_numbers_move_lists_and_resample_spaces():
    knobs = {"train.learning_rate": 1e-3, "peft.r": 8, "train.lr_scheduler_type": "linear"}
    for seed in range(20):
        changes = _policy({"learning_rate": None, "r": None}, seed=seed).mutate(knobs)
        assert changes["train.learning_rate"] in (pytest.approx(8e-4), pytest.approx(1.2e-3))
        assert changes["peft.r"] in (6, 10)  # 8 * 0.8 or 8 * 1.2, rounded
    schedulers = List(["constant", "linear", "cosine"])
    moved = {
        _policy({"lr_scheduler_type": schedulers}, seed=s).mutate(knobs)["train.lr_scheduler_type"]
        for s in range(20)
    }
    assert moved == {"constant", "cosine"}  # the neighbours of "linear"
    space = Range(1e-5, 1e-2, log=True)
    drawn = {
        _policy({"learning_rate": space}, resample=1.0, seed=s).mutate(knobs)["train.learning_rate"]
        for s in range(5)
    }
    assert len(drawn) == 5 and all(1e-5 <= d <= 1e-2 for d in drawn)  # fresh draws, not x0.8 / x1.2
    with pytest.raises(ConfigError, match="must name one knob set in every config"):
        _policy({"warmup_steps": None}).mutate(knobs)


def test_settings_are_checked_up_front(tiny_model_dir):
    cfg = RFModelConfig(model_name=tiny_model_dir, training_args=RFSFTConfig(learning_rate=1e-3))
    with pytest.raises(ConfigError, match="quantile must be in"):
        RFPopulationBased(cfg, quantile=0.9)
    with pytest.raises(ConfigError, match="must name one knob set in every config"):
        RFPopulationBased(cfg, mutations={"warmup_steps": None}).expand()


def test_the_worst_run_is_replaced_by_a_warm_clone_of_the_best_with_a_mutated_lr(
    tmp_path, tiny_model_dir, create_tiny_model
):
    config = RFModelConfig(
        model_name=tiny_model_dir,
        peft_config=RFLoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]),
        training_args=RFSFTConfig(learning_rate=List([5e-3, 1e-8, 2e-3, 1e-3]), per_device_train_batch_size=2,
                                  max_length=64, max_steps=4, logging_steps=1, lr_scheduler_type="constant"),
        formatting_func=formatting_function,
    )  # fmt: skip
    search = RFPopulationBased(config, trainer_type="SFT", perturbation_interval=1, quantile=0.25, seed=1)
    exp = Experiment("pbt", experiment_path=tmp_path, verbose=False)
    exp.run_fit(
        search, create_tiny_model, support_dataset(n=16, seed=3), support_dataset(n=4, seed=9), num_chunks=4
    )
    commands = exp.get_commands()
    assert commands["source"].eq("automl").all() and commands["status"].eq("applied").all()
    first = commands.iloc[:2]
    assert first["op"].tolist() == ["stop", "clone"]
    loser, parent = first["run_id"].tolist()
    assert loser == 2  # lr 1e-8: the worst eval loss after chunk 1
    info = exp.get_runs_info().set_index("run_id")
    clone_id = first["result"].iloc[1]["run_id"]
    assert info.loc[clone_id, "parent_run_id"] == parent and info.loc[clone_id, "warm_start"]
    parent_lr = info.loc[parent, "train.learning_rate"]
    assert info.loc[clone_id, "train.learning_rate"] in (
        pytest.approx(0.8 * parent_lr),
        pytest.approx(1.2 * parent_lr),
    )
    assert info.loc[loser, "status"] == "STOPPED"
    results = exp.get_results()
    clone_rows = results[results.run_id == clone_id].reset_index(drop=True)
    parent_rows = results[results.run_id == parent]
    # its first weights are its parent's after chunk 1 (step 2): same loss on the step-3 batch
    assert clone_rows.loc[0, "loss"] == pytest.approx(
        parent_rows[parent_rows.step == 3]["loss"].item(), rel=1e-5
    )
    assert clone_rows.loc[0, "learning_rate"] == pytest.approx(info.loc[clone_id, "train.learning_rate"])
    exp.end()
