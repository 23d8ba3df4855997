"""The run controller applies commands in order, each once; a bad command fails with its
reason and changes nothing; delete frees a run; the loop's seams; run_fit's background form."""

from __future__ import annotations

import threading

from mlflow.tracking import MlflowClient

from rapidfire_core import Experiment
from rapidfire_core.automl import List, RFGridSearch, RFLoraConfig, RFModelConfig, RFSFTConfig
from rapidfire_core.demo.data import formatting_function, support_dataset


def _configs(model_dir, learning_rates=(1e-3, 1e-4), max_steps=4):
    return RFModelConfig(
        model_name=model_dir,
        peft_config=RFLoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]),
        training_args=RFSFTConfig(
            per_device_train_batch_size=2,
            max_length=64,
            logging_steps=1,
            max_steps=max_steps,
            learning_rate=List(list(learning_rates)),
        ),
        formatting_func=formatting_function,
    )


def test_commands_apply_in_order_and_bad_ones_fail_with_their_reason(
    tmp_path, tiny_model_dir, create_tiny_model
):
    exp = Experiment("ops", experiment_path=tmp_path, verbose=False)
    submitted = []
    seen = {}

    def look_after_delete(controller):
        if submitted and "adapters" not in seen:  # the first turn after the commands applied
            seen["adapters"] = set(controller.runs[1].model.peft_config)
            seen["threads"] = {t.name for t in threading.enumerate()}

    def after_first_round(controller, round_number):
        if submitted:
            return
        submitted.extend([
            exp.resume_run(2),                                  # ONGOING: not resumable
            exp.stop_run(99),                                   # no such run
            exp.clone_run(1, {"bogus_knob": 1}),                # not a field
            exp.clone_run(1, {"learning_rate": "fast"}),        # wrong type, named
            exp.clone_run(2, {"learning_rate": 5e-4}),          # accepted before the delete: applies
            exp.delete_run(2),
            exp.stop_run(2),                                    # DELETED by now
            exp.clone_run(2, {}),                               # DELETED by now
        ])  # fmt: skip

    exp.controller.hooks.round_end.append(after_first_round)
    exp.controller.hooks.between_turns.append(look_after_delete)
    exp.run_fit(RFGridSearch(_configs(tiny_model_dir), trainer_type="SFT"), create_tiny_model,
                support_dataset(n=8), num_chunks=2)  # fmt: skip
    done = [exp.wait_for(c, timeout=1) for c in submitted]
    assert [c.status for c in done] == ["failed"] * 4 + ["applied"] * 2 + ["failed"] * 2
    assert "run 2 is ONGOING: only a STOPPED run can be resumed" in done[0].error
    assert done[1].error == "no run with id 99"
    assert "bogus_knob" in done[2].error
    assert "learning_rate" in done[3].error and "expected float" in done[3].error
    assert done[4].new_run_id == 3
    assert done[6].error == "run 2 is DELETED" and done[7].error == "run 2 is DELETED"
    applied_at = [c.applied_at for c in done]
    assert applied_at == sorted(applied_at)  # in command order, one pass
    assert exp.get_commands()["status"].tolist() == [c.status for c in done]

    info = exp.get_runs_info().set_index("run_id")
    assert info["status"].to_dict() == {1: "COMPLETED", 2: "DELETED", 3: "COMPLETED"}  # no other run made
    assert info.loc[3, "parent_run_id"] == 2
    assert exp.get_results().query("run_id == 2")["loss"].count() == 2  # a deleted run's rows stay
    # delete freed the run: its adapter is gone from the shared base model and its thread ended
    assert "run_2" not in seen["adapters"] and "run_1" in seen["adapters"]
    assert "rapidfire-run-2" not in seen["threads"]
    client = MlflowClient(exp.tracking_uri)
    deleted = client.get_run(info.loc[2, "mlflow_run_id"]).info
    assert (deleted.lifecycle_stage, deleted.status) == ("deleted", "KILLED")  # never left RUNNING
    assert client.get_run(info.loc[3, "mlflow_run_id"]).data.tags["rapidfire.parent_run_id"] == "2"

    # After run_fit: a COMPLETED run cannot be resumed, and nothing changes.
    late = exp.resume_run(1)
    exp.continue_fit()
    assert exp.wait_for(late, timeout=1).error == "run 1 is COMPLETED: only a STOPPED run can be resumed"
    assert exp.get_runs_info().set_index("run_id")["status"].to_dict() == {
        1: "COMPLETED",
        2: "DELETED",
        3: "COMPLETED",
    }
    exp.end()


def test_stop_and_resume_update_mlflow_and_a_background_fit_can_be_cancelled(
    tmp_path, tiny_model_dir, create_tiny_model
):
    exp = Experiment("background", experiment_path=tmp_path, verbose=False)
    handle = exp.run_fit(RFGridSearch(_configs(tiny_model_dir, max_steps=400), trainer_type="SFT"),
                         create_tiny_model, support_dataset(n=8), num_chunks=2, background=True)  # fmt: skip
    stop = exp.wait_for(exp.stop_run(1), timeout=120)
    assert stop.status == "applied"
    client = MlflowClient(exp.tracking_uri)
    mlflow_id = exp.get_runs_info().set_index("run_id").loc[1, "mlflow_run_id"]
    exp.controller.tracker.flush()
    assert client.get_run(mlflow_id).info.status == "KILLED"
    assert exp.wait_for(exp.resume_run(1), timeout=120).status == "applied"
    exp.controller.tracker.flush()
    assert client.get_run(mlflow_id).info.status == "RUNNING"
    assert not handle.done
    handle.cancel()
    import pytest

    from rapidfire_core.scheduler.controller import FitCancelled

    with pytest.raises(FitCancelled):
        handle.wait(timeout=120)
    info = exp.get_runs_info()
    assert info["status"].tolist() == ["STOPPED", "STOPPED"]
    assert set(info["error"]) == {"run_fit was interrupted"}
    assert not [t for t in threading.enumerate() if t.name.startswith(("rapidfire-run-", "rapidfire-fit"))]
    assert {client.get_run(m).info.status for m in info["mlflow_run_id"]} == {"KILLED"}
    exp.end()


def test_num_shards_is_an_alias_of_num_chunks(tmp_path, tiny_model_dir, create_tiny_model):
    import pytest

    exp = Experiment("shards", experiment_path=tmp_path, verbose=False)
    with pytest.raises(ValueError, match="num_chunks=2 and num_shards=3 disagree"):
        exp.run_fit(RFGridSearch(_configs(tiny_model_dir), trainer_type="SFT"), create_tiny_model,
                    support_dataset(n=8), num_chunks=2, num_shards=3)  # fmt: skip
    exp.run_fit(RFGridSearch(_configs(tiny_model_dir, learning_rates=(1e-3,)), trainer_type="SFT"),
                create_tiny_model, support_dataset(n=8), num_shards=2)  # fmt: skip
    assert exp.get_results()["chunk"].tolist() == [1, 1, 2, 2]
    exp.end()


def _clone_after_first_round(exp, commands, *requests):
    def hook(controller, round_number):
        if not commands:
            commands.extend(
                exp.clone_run(run_id, changes, warm_start=warm) for run_id, changes, warm in requests
            )

    exp.controller.hooks.round_end.append(hook)


def test_dpo_clones_edit_beta_and_loss_type_cold_and_warm(tmp_path, tiny_model_dir, create_tiny_model):
    from rapidfire_core.demo.data import preference_dataset
    from tests.small_configs import dpo_two_betas

    exp = Experiment("dpo-clones", experiment_path=tmp_path, verbose=False)
    commands = []
    _clone_after_first_round(
        exp, commands, (1, {"beta": 0.3, "loss_type": "ipo"}, False), (2, {"learning_rate": 1e-3}, True),
        (1, {"beta": "high"}, False),
    )  # fmt: skip
    exp.run_fit(RFGridSearch(dpo_two_betas(tiny_model_dir), trainer_type="DPO"), create_tiny_model,
                preference_dataset(n=8, seed=1), num_chunks=2, seed=0)  # fmt: skip
    cold, warm, bad = (exp.wait_for(c, timeout=1) for c in commands)
    assert (cold.status, warm.status, bad.status) == ("applied", "applied", "failed")
    assert "beta" in bad.error
    info = exp.get_runs_info().set_index("run_id")
    assert info["status"].tolist() == ["COMPLETED"] * 4, info["error"].tolist()
    assert (info.loc[3, "train.beta"], info.loc[3, "train.loss_type"]) == (0.3, "ipo")
    results = exp.get_results()
    # The cold clone starts from a fresh adapter: its first IPO loss is the fresh policy's.
    # The warm clone starts from run 2's adapter after its first chunk (2 steps): not at log(2).
    first = results[results.step == 1].set_index("run_id")["loss"]
    assert abs(first[2] - 0.6931) < 1e-3 and abs(first[4] - 0.6931) > 1e-3
    assert (
        "rewards/margins" in results.columns and results.query("run_id == 4")["rewards/margins"].notna().all()
    )
    exp.end()


def test_grpo_clone_keeps_the_parents_reward_functions(tmp_path, tiny_model_dir, create_tiny_model):
    from rapidfire_core.demo.data import math_prompt_dataset
    from tests.small_configs import grpo_two_learning_rates

    exp = Experiment("grpo-clones", experiment_path=tmp_path, verbose=False)
    commands = []
    _clone_after_first_round(exp, commands, (1, {"num_generations": 4, "max_completion_length": 4}, True))
    exp.run_fit(RFGridSearch(grpo_two_learning_rates(tiny_model_dir), trainer_type="GRPO"), create_tiny_model,
                math_prompt_dataset(n=8), num_chunks=2)  # fmt: skip
    clone = exp.wait_for(commands[0], timeout=1)
    assert clone.status == "applied", clone.error
    info = exp.get_runs_info().set_index("run_id")
    assert info["status"].tolist() == ["COMPLETED"] * 3, info["error"].tolist()
    assert info.loc[3, "train.num_generations"] == 4
    results = exp.get_results().query("run_id == 3")
    assert (
        results["rewards/answer_reward/mean"].notna().any()
        and results["rewards/format_reward/mean"].notna().any()
    )
    exp.end()
