"""Sweeps written the way RapidFire AI's fit tutorials write them, with the import renamed.

SFT chat-QA, DPO alignment and GRPO math reasoning in the tutorials' style: the
``rapidfireai.fit.automl`` import renamed to ``rapidfire_core.fit.automl``, RapidFire AI's
Experiment / run_fit arguments, ``model_kwargs`` written for a GPU (16-bit dtypes, ``"auto"``,
4-bit flags) splatted straight into ``from_pretrained``, the DPO adapter-name fields, GRPO reward
lists. Our own code on a tiny local model and a few steps: every run ends COMPLETED.
"""

from __future__ import annotations

import math
import sys
import warnings

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from rapidfire_core.demo.data import math_prompt_dataset, preference_dataset, support_dataset
from rapidfire_core.demo.tiny_model import build_tiny_llama
from rapidfire_core.fit import Experiment, arguments
from rapidfire_core.fit.automl import (
    List,
    RFDPOConfig,
    RFGridSearch,
    RFGRPOConfig,
    RFLoraConfig,
    RFModelConfig,
    RFSFTConfig,
)
from rapidfire_core.tracking.mlflow_tracker import MLflowTracker

LOG_2 = math.log(2)


def made_by(calls: list):
    """The tutorials' create_model (kwargs splatted straight into from_pretrained), recording
    each call's model name, the kwargs it got and the dtype of the model it made."""

    def sample_create_model(model_config):
        model_name = model_config["model_name"]
        model_kwargs = model_config["model_kwargs"]
        model = AutoModelForCausalLM.from_pretrained(model_name, **model_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(model_name, **model_config["tokenizer_kwargs"])
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        calls.append((str(model_name), dict(model_kwargs), next(model.parameters()).dtype))
        return (model, tokenizer)

    return sample_create_model


def mlflow_params(exp) -> dict[int, dict[str, str]]:
    tracker = MLflowTracker(exp.experiment_name, exp.tracking_uri)
    client = tracker._client
    info = exp.get_runs_info()
    return {int(r.run_id): client.get_run(r.mlflow_run_id).data.params for r in info.itertuples()}


class TrainingLogWatch(TrainerCallback):
    """Records the training log's size and torch's thread count at every step (shared by copies)."""

    sizes: list[int] = []
    threads: list[int] = []
    path = None

    def on_step_begin(self, args, state, control, **kwargs):
        TrainingLogWatch.sizes.append(TrainingLogWatch.path.stat().st_size)
        TrainingLogWatch.threads.append(torch.get_num_threads())


def test_sft_chatqa_style_sweep(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("RF_TENSORBOARD_ENABLED", "true")  # MLflow stays on by default
    calls: list = []

    def sample_formatting_function(row):
        return {
            "prompt": [
                {"role": "system", "content": "You are a helpful and friendly customer support assistant."},
                {"role": "user", "content": row["instruction"]},
            ],
            "completion": [{"role": "assistant", "content": row["response"]}],
        }

    experiment = Experiment(
        experiment_name="exp1-chatqa-lite", mode="fit", experiment_path=tmp_path, verbose=False, num_cpus=1
    )
    assert (experiment.mode, experiment.experiment_path) == ("fit", tmp_path.resolve())
    TrainingLogWatch.path = experiment.get_log_file_path("training")
    TrainingLogWatch.sizes, TrainingLogWatch.threads = [], []
    # 16 rows in 2 chunks of 4 steps: max_steps 2 ends partway through chunk 1; 6, partway through 2
    config = RFModelConfig(
        model_name=tiny_model_dir,
        peft_config=RFLoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj"]),
        training_args=RFSFTConfig(
            learning_rate=1e-3,
            lr_scheduler_type="linear",
            per_device_train_batch_size=2,
            max_steps=List([2, 6, 6]),
            logging_steps=1,
            fp16=True,
            callbacks=[TrainingLogWatch],
        ),
        model_type="causal_lm",
        model_kwargs={"device_map": "auto", "torch_dtype": "auto", "use_cache": False},
        formatting_func=sample_formatting_function,
    )
    config_group = RFGridSearch(configs=config, trainer_type="SFT")
    experiment.run_fit(
        config_group, made_by(calls), support_dataset(n=16, seed=0), None, num_chunks=2, seed=42
    )

    info = experiment.get_runs_info()
    assert info["status"].tolist() == ["COMPLETED"] * 3, info["error"].tolist()
    assert info["chunks_done"].tolist() == [1, 2, 2]  # the chunk a run ends in counts
    assert [dtype for _, _, dtype in calls] == [torch.float32]  # "auto" -> float32 on CPU, one base
    assert set(TrainingLogWatch.threads) == {1}  # num_cpus=1 while training

    # the three runs share a base and train as one fused cohort: each run's time is the cohort's
    ends = experiment.get_results().dropna(subset=["train_runtime"]).set_index("run_id")
    assert (ends["train_runtime"] > 0).all() and (ends["train_runtime"] <= ends["train_wall_runtime"]).all()

    # effective params, and the typed value where it differs
    params = mlflow_params(experiment)[2]
    assert (params["train.fp16"], params["typed.train.fp16"]) == ("False", "True")
    assert (params["model_kwargs.torch_dtype"], params["typed.model_kwargs.torch_dtype"]) == (
        "torch.float32",
        "auto",
    )
    assert params["train.learning_rate"] == "0.001" and "typed.train.learning_rate" not in params
    assert params["train.use_cpu"] == "True"
    assert (
        experiment.experiment_id
        == MLflowTracker(experiment.experiment_name, experiment.tracking_uri).experiment_id
    )

    # TensorBoard: one run directory of event files per run, with its loss curve
    for run_id, steps in ((1, 2), (2, 6), (3, 6)):
        events = EventAccumulator(str(experiment.path / "tensorboard_logs" / f"run-{run_id}")).Reload()
        assert [e.step for e in events.Scalars("loss")] == list(range(1, steps + 1))

    # the log files exist and grew while the runs trained
    sizes = TrainingLogWatch.sizes
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]
    training_log = experiment.get_log_file_path("training").read_text()
    assert "run-3 step 6: loss=" in training_log and "run-1 ended: FINISHED" in training_log
    main_log = experiment.get_log_file_path("main").read_text()
    assert experiment.get_log_file_path("experiment") == experiment.get_log_file_path()
    assert "chunk 2/2]" in main_log and "run 3 (max_steps=6) step 6/6" in main_log
    assert "Done: 3 completed" in main_log
    experiment.end()


def test_dpo_alignment_style_sweep_with_a_shared_reference_model(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(arguments, "_warned", set())
    reference_dir = str(tmp_path / "sft-reference")
    build_tiny_llama(reference_dir, seed=7)  # another model: the reference differs from the base
    calls: list = []
    experiment = Experiment(experiment_name="exp1-dpo-alignment-lite", mode="fit", experiment_path=tmp_path)
    base_dpo_config = RFDPOConfig(
        model_adapter_name="default",
        ref_adapter_name="reference",
        force_use_ref_model=False,
        loss_type="sigmoid",
        beta=0.1,
        max_prompt_length=32,
        max_completion_length=32,
        per_device_train_batch_size=2,
        learning_rate=5e-3,
        optim="paged_adamw_8bit",
        warmup_ratio=0.1,
        lr_scheduler_type="cosine",
        max_steps=4,
        logging_steps=1,
        bf16=True,
    )
    lora = RFLoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], bias="none"
    )

    def model_config(ref_model_name, beta):
        dpo = base_dpo_config.copy()
        dpo.beta = beta
        return RFModelConfig(
            model_name=tiny_model_dir,
            ref_model_name=ref_model_name,
            peft_config=lora.copy(),
            training_args=dpo,
            model_kwargs={"device_map": "auto", "torch_dtype": torch.bfloat16, "load_in_4bit": True},
            tokenizer_kwargs={"model_max_length": 64, "padding_side": "left", "truncation": True},
        )

    config_set = List(
        [model_config(reference_dir, 0.1), model_config(reference_dir, 0.5), model_config(None, 0.1)]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        experiment.run_fit(
            RFGridSearch(configs=config_set, trainer_type="DPO"),
            made_by(calls),
            preference_dataset(n=8, seed=0),
            eval_dataset=None,
            num_chunks=2,
            seed=42,
            num_gpus=1,
            monte_carlo_simulations=1000,
        )
    said = [str(w.message) for w in caught]
    assert any("run_fit(num_gpus=1) has no effect" in m for m in said)
    assert any("monte_carlo_simulations=1000) has no effect" in m for m in said)
    assert any("load_in_4bit=True dropped" in m for m in said)
    info = experiment.get_runs_info()
    assert info["status"].tolist() == ["COMPLETED"] * 3, info["error"].tolist()
    # one base and one reference model, each made once; 16-bit and 4-bit settings translated
    assert sorted(name for name, _, _ in calls) == sorted([tiny_model_dir, reference_dir])
    for _, kwargs, dtype in calls:
        assert kwargs["torch_dtype"] is torch.float32 and "load_in_4bit" not in kwargs
        assert dtype == torch.float32
    results = experiment.get_results()
    # runs 1 and 2 (own reference: time-sliced) interleave over 2 chunks of 2 steps: each one's
    # own train_runtime leaves out the turns it waited through; TRL's wall time spans them
    ends = results.dropna(subset=["train_runtime"]).set_index("run_id")
    assert (ends.loc[[1, 2], "train_wall_runtime"] - ends.loc[[1, 2], "train_runtime"] > 0.05).all()
    first = results.query("step == 1").set_index("run_id")["loss"]
    # the base model as reference: a fresh adapter gives log(2); the separate reference does not
    assert abs(first[3] - LOG_2) < 1e-3
    assert abs(first[1] - LOG_2) > 1e-3 and abs(first[2] - LOG_2) > 1e-3
    experiment.end()


def test_grpo_math_reasoning_style_sweep_tracked_in_trackio(tmp_path, tiny_model_dir, monkeypatch):
    # Trackio reads $TRACKIO_DIR once, when imported (TRL imports it): point its modules at a
    # store of this test's own, not the user's ~/.cache/huggingface/trackio.
    import trackio  # noqa: F401 - so that every module that holds the location is loaded

    store = tmp_path / "trackio"
    for name, module in list(sys.modules.items()):
        if name.startswith("trackio") and hasattr(module, "TRACKIO_DIR"):
            monkeypatch.setattr(module, "TRACKIO_DIR", store)
    project = f"grpo-{tmp_path.name}"
    monkeypatch.setenv("TRACKIO_PROJECT_NAME", project)
    calls: list = []

    def sample_formatting_function(row):
        return {
            "prompt": [
                {"role": "system", "content": "Respond with the number only."},
                {"role": "user", "content": row["prompt"]},
            ],
            "question": row["prompt"],
            "answer": row["answer"],
        }

    def correctness_reward_func(prompts, completions, answer, **kwargs) -> list[float]:
        responses = [completion[0]["content"] for completion in completions]
        return [2.0 if r.strip() == a else 0.0 for r, a in zip(responses, answer, strict=True)]

    def int_reward_func(completions, **kwargs) -> list[float]:
        return [0.5 if completion[0]["content"].strip().isdigit() else 0.0 for completion in completions]

    grpo_config_base = RFGRPOConfig(
        learning_rate=5e-6,
        warmup_ratio=0.1,
        weight_decay=0.1,
        max_grad_norm=0.1,
        lr_scheduler_type="linear",
        per_device_train_batch_size=4,
        num_generations=2,
        optim="adamw_8bit",
        max_prompt_length=64,
        max_completion_length=6,
        max_steps=2,
        logging_steps=1,
        beta=0.0,
    )
    grpo_config_2 = grpo_config_base.copy()
    grpo_config_2.learning_rate = 1e-6

    def model_config(training_args):
        return RFModelConfig(
            model_name=tiny_model_dir,
            peft_config=RFLoraConfig(
                r=16, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"]
            ),
            training_args=training_args,
            formatting_func=sample_formatting_function,
            reward_funcs=[correctness_reward_func, int_reward_func],
            model_kwargs={
                "load_in_4bit": False,
                "device_map": "auto",
                "torch_dtype": "float16",
                "use_cache": False,
            },
            tokenizer_kwargs={"model_max_length": 128, "padding_side": "left", "truncation": True},
        )

    experiment = Experiment(
        experiment_name="exp1-math-reasoning-lite",
        mode="fit",
        experiment_path=tmp_path,
        verbose=False,
        trackers=["mlflow", "trackio"],
    )
    config_group = RFGridSearch(
        configs=List([model_config(grpo_config_base), model_config(grpo_config_2)]), trainer_type="GRPO"
    )
    experiment.run_fit(config_group, made_by(calls), math_prompt_dataset(n=8), None, num_chunks=2, seed=42)
    info = experiment.get_runs_info()
    assert info["status"].tolist() == ["COMPLETED"] * 2, info["error"].tolist()
    assert [(kwargs.get("load_in_4bit"), dtype) for _, kwargs, dtype in calls] == [(None, torch.float32)]
    results = experiment.get_results()
    assert any(c.startswith("rewards/correctness_reward_func") for c in results.columns)
    experiment.end()

    from trackio.sqlite_storage import SQLiteStorage

    assert sorted(SQLiteStorage.get_runs(project)) == ["run-1", "run-2"]
    assert list(store.glob("*.db"))  # in the test's store
    logged = [row["step"] for row in SQLiteStorage.get_logs(project, "run-2") if "loss" in row]
    assert logged == [1, 2]
    assert SQLiteStorage.get_run_config(project, "run-2")["train.learning_rate"] == pytest.approx(1e-6)
