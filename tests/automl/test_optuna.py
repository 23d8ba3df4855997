"""RFOptuna: trials from Optuna's ask/tell, pruned at chunk ends, replaced while the budget lasts."""

from __future__ import annotations

import optuna
import pytest

from rapidfire_core import Experiment
from rapidfire_core.automl import List, Range, RFLoraConfig, RFModelConfig, RFOptuna, RFSFTConfig
from rapidfire_core.demo.data import formatting_function, support_dataset
from rapidfire_core.errors import ConfigError


def _space(model_dir):
    return RFModelConfig(
        model_name=model_dir,
        peft_config=RFLoraConfig(r=List([4, 8]), lora_alpha=16, target_modules=["q_proj", "v_proj"]),
        training_args=RFSFTConfig(learning_rate=Range(1e-8, 1e-2, log=True), per_device_train_batch_size=2,
                                  max_length=64, max_steps=8, logging_steps=1),
        formatting_func=formatting_function,
    )  # fmt: skip


def test_expand_draws_n_initial_valid_trials_from_the_space(tiny_model_dir):
    search = RFOptuna(_space(tiny_model_dir), n_initial=3, budget=5, sampler="random", seed=0)
    specs = search.expand()
    assert len(specs) == 3 and search.trials_made == 3
    for spec, trial in zip(specs, search.initial_trials, strict=True):
        assert spec.knobs["train.learning_rate"] == trial.params["training_args.learning_rate"]
        assert spec.knobs["peft.r"] == trial.params["peft_config.r"] in (4, 8)
        assert 1e-8 <= spec.knobs["train.learning_rate"] <= 1e-2


def test_settings_are_checked_up_front(tiny_model_dir):
    space = _space(tiny_model_dir)
    with pytest.raises(ConfigError, match="budget .* must be at least n_initial"):
        RFOptuna(space, n_initial=4, budget=2)
    with pytest.raises(ConfigError, match="sampler must be one of"):
        RFOptuna(space, sampler="grid")
    with pytest.raises(ConfigError, match="single-objective studies only"):
        RFOptuna(space, objective=["minimize:eval_loss", "maximize:eval_mean_token_accuracy"])
    with pytest.raises(ConfigError, match="pass an eval_dataset"):
        RFOptuna(space).search_policy().check(has_eval=False)


def test_budget_pruning_replacements_and_the_persisted_study(tmp_path, tiny_model_dir, create_tiny_model):
    search = RFOptuna(
        _space(tiny_model_dir), n_initial=3, budget=5, pruner="median", sampler="random", seed=3
    )
    exp = Experiment("optuna", experiment_path=tmp_path, verbose=False)
    exp.run_fit(
        search, create_tiny_model, support_dataset(n=16, seed=3), support_dataset(n=4, seed=9), num_chunks=4
    )
    info = exp.get_runs_info().set_index("run_id")
    assert len(info) == 5  # the budget: 3 initial trials, then one new trial per ended one
    assert set(info["status"]) <= {"COMPLETED", "STOPPED"} and (info["status"] == "STOPPED").any()
    commands = exp.get_commands()
    assert commands["source"].eq("automl").all() and commands["status"].eq("applied").all()
    assert (commands["op"] == "clone").sum() == 2  # the two replacement trials

    study = optuna.load_study(study_name="optuna", storage=f"sqlite:///{exp.path / 'optuna.db'}")
    trials = {round(t.params["training_args.learning_rate"], 15): t for t in study.trials}
    assert len(trials) == 5
    results = exp.get_results()
    for run_id, row in info.iterrows():
        trial = trials[round(row["train.learning_rate"], 15)]
        assert trial.params["peft_config.r"] == row["peft.r"]
        if row["status"] == "STOPPED":  # pruned at a chunk end: worse than the median of the others
            assert trial.state == optuna.trial.TrialState.PRUNED
            assert row["global_step"] < 8
        else:
            assert trial.state == optuna.trial.TrialState.COMPLETE
            last_eval = results[results.run_id == run_id]["eval_loss"].dropna().iloc[-1]
            assert trial.value == pytest.approx(last_eval)
        assert sorted(trial.intermediate_values) == list(range(1, len(trial.intermediate_values) + 1))
    exp.end()


def test_an_objective_no_run_logs_is_refused_before_training_and_leaves_no_trial(
    tmp_path, tiny_model_dir, create_tiny_model
):
    search = RFOptuna(_space(tiny_model_dir), n_initial=2, budget=2, objective="maximize:rougeL", seed=0)
    exp = Experiment("refused", experiment_path=tmp_path, verbose=False)
    with pytest.raises(ConfigError, match="'rougeL' cannot be computed: no run of this sweep logs"):
        exp.run_fit(
            search, create_tiny_model, support_dataset(n=8), support_dataset(n=4, seed=9), num_chunks=2
        )
    assert exp.get_runs_info().empty
    assert not (exp.path / "optuna.db").exists()  # the drawn trials stayed in memory
    assert search._study is search.study  # RapidFire AI's attribute name
    exp.end()


def test_running_the_search_again_trains_in_name_1_and_leaves_the_first_study_as_it_was(
    tmp_path, tiny_model_dir, create_tiny_model
):
    def search():
        space = _space(tiny_model_dir)
        space.training_args.max_steps = 2
        return RFOptuna(space, n_initial=2, budget=2, sampler="random", seed=1)

    data = support_dataset(n=8, seed=3), support_dataset(n=2, seed=9)
    for _ in range(2):  # the notebook run top to bottom twice
        exp = Experiment("optuna", experiment_path=tmp_path, verbose=False)
        exp.run_fit(search(), create_tiny_model, *data, num_chunks=2)
        assert exp.get_runs_info()["status"].tolist() == ["COMPLETED", "COMPLETED"]
        exp.end()
    assert exp.experiment_name == "optuna_1"
    for name in ("optuna", "optuna_1"):
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / name / 'optuna.db'}")
        assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]  # no orphan trial
