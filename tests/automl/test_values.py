"""Bad values are refused at expand() (and in clone edits), each named by its path from the
search's configs, before any model exists: the ranges TRL/PEFT/torch check only late or never,
and the checks TRL and transformers make themselves, located at our config path."""

from __future__ import annotations

import warnings

import pytest

from rapidfire_core.automl import (
    List,
    RFDPOConfig,
    RFGridSearch,
    RFGRPOConfig,
    RFLoraConfig,
    RFModelConfig,
    RFRandomSearch,
    RFSFTConfig,
)
from rapidfire_core.automl.edit import edit_spec
from rapidfire_core.automl.translate import assume_gpu
from rapidfire_core.errors import ConfigError, ConfigTranslationWarning

MODEL = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
TRAINING = {"SFT": RFSFTConfig, "DPO": RFDPOConfig, "GRPO": RFGRPOConfig}


@pytest.fixture(autouse=True)
def _no_gpu():
    with assume_gpu(False), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigTranslationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _reward(completions, **kwargs):
    return [0.0 for _ in completions]


def _config(trainer_type="SFT", lora=None, **train):
    defaults = {"GRPO": dict(num_generations=2, per_device_train_batch_size=2)}.get(trainer_type, {})
    return RFModelConfig(
        model_name=MODEL,
        peft_config=RFLoraConfig(**(lora or {"r": 8})),
        training_args=TRAINING[trainer_type](**{**defaults, **train}),
        reward_funcs=_reward if trainer_type == "GRPO" else None,
    )


def _refused(configs, trainer_type="SFT") -> str:
    with pytest.raises(ConfigError) as err:
        RFGridSearch(configs, trainer_type=trainer_type).expand()
    return str(err.value)


@pytest.mark.parametrize(
    ("trainer_type", "lora", "train", "path", "text"),
    [
        ("SFT", {"r": 0}, {}, "peft_config.r", "RFLoraConfig.r must be an integer >= 1 (the LoRA rank), got 0"),
        ("SFT", {"r": -1}, {}, "peft_config.r", "got -1"),
        ("SFT", {"r": 8, "lora_dropout": 2}, {}, "peft_config.lora_dropout", "must be a probability in [0, 1), got 2"),
        ("SFT", {"r": 8, "lora_alpha": 0}, {}, "peft_config.lora_alpha", "a number > 0"),
        ("SFT", {"r": 8, "rank_pattern": {"q_proj": 0}}, {}, "peft_config.rank_pattern", "ranks >= 1"),
        ("SFT", None, {"per_device_train_batch_size": 0}, "training_args.per_device_train_batch_size",
         "RFSFTConfig.per_device_train_batch_size must be an integer >= 1, got 0"),
        ("SFT", None, {"learning_rate": -1}, "training_args.learning_rate", "a finite number >= 0"),
        ("SFT", None, {"learning_rate": float("nan")}, "training_args.learning_rate", "got nan"),
        ("SFT", None, {"gradient_accumulation_steps": 0}, "training_args.gradient_accumulation_steps", "got 0"),
        ("SFT", None, {"max_steps": 0}, "training_args.max_steps", "-1 (train num_train_epochs) or an integer >= 1"),
        ("SFT", None, {"num_train_epochs": 0}, "training_args.num_train_epochs", "> 0 unless max_steps >= 1"),
        ("SFT", None, {"seed": -1}, "training_args.seed", "an integer in [0, 2**32)"),
        ("SFT", None, {"adam_beta2": 1.0}, "training_args.adam_beta2", "in [0, 1)"),
        ("SFT", None, {"weight_decay": -0.1}, "training_args.weight_decay", "got -0.1"),
        ("SFT", None, {"max_length": 0}, "training_args.max_length", "None or an integer >= 1 (tokens)"),
        ("SFT", None, {"logging_steps": -1}, "training_args.logging_steps", "a number >= 0"),
        ("DPO", None, {"beta": 0.0}, "training_args.beta", "RFDPOConfig.beta must be a finite number > 0"),
        ("GRPO", None, {"temperature": 0.0}, "training_args.temperature", "a finite number > 0"),
        ("GRPO", None, {"top_p": 0.0}, "training_args.top_p", "in (0, 1]"),
        ("GRPO", None, {"max_completion_length": 0}, "training_args.max_completion_length", "got 0"),
    ],
)  # fmt: skip
def test_each_bad_value_is_refused_with_its_path(trainer_type, lora, train, path, text):
    message = _refused(_config(trainer_type, lora, **train), trainer_type)
    assert f"configs[0].{path}: " in message and text in message


def test_the_path_names_the_config_and_only_the_runs_with_the_bad_value_are_listed():
    good, bad = _config(), _config(lora={"r": List([8, 0])}, learning_rate=List([1e-3, -1.0]))
    message = _refused(List([good, bad]))
    assert "3 of 5 runs invalid" in message
    assert (
        "configs[1].peft_config.r: RFLoraConfig.r must be an integer >= 1 (the LoRA rank), got 0" in message
    )
    assert "configs[1].training_args.learning_rate: " in message and "configs[0]" not in message
    # a run with both problems lists both
    assert "run 5 {peft.r=0, train.learning_rate=-1.0}: configs[1].peft_config.r" in message
    assert "got 0; configs[1].training_args.learning_rate: " in message


def test_random_search_names_the_config_it_drew_the_bad_run_from():
    with pytest.raises(ConfigError) as err:
        RFRandomSearch(List([_config(), _config(lora={"r": 0})]), num_runs=2, seed=0).expand()
    assert "configs[1].peft_config.r: " in str(err.value)


def test_checks_trl_and_transformers_make_are_reused_and_located():
    # transformers refuses warmup_steps < 0 itself: its message, at the field it names
    message = _refused(_config(warmup_steps=-1))
    assert "configs[0].training_args.warmup_steps: RFSFTConfig: " in message
    assert "rejected the configuration" in message and "warmup_steps >= 0" in message
    # TRL refuses one generation per prompt; its message names no field: the config's path
    message = _refused(_config("GRPO", num_generations=1, per_device_train_batch_size=1), "GRPO")
    assert "configs[0].training_args: RFGRPOConfig: trl.GRPOConfig rejected" in message
    assert "at least 2 generations" in message
    # engine checks are located too
    message = _refused(_config(packing=True))
    assert "configs[0].training_args: RFSFTConfig.packing=True is not supported" in message
    best = dict(
        load_best_model_at_end=True, eval_strategy="steps", save_strategy="steps", eval_steps=2, save_steps=2
    )
    message = _refused(_config(**best))  # the run's trainer (no checkpoints) would fail when built
    assert "configs[0].training_args: RFSFTConfig.load_best_model_at_end=True is not supported" in message


def test_a_clone_edit_is_held_to_the_same_rules():
    spec = RFGridSearch(_config()).expand()[0]
    with pytest.raises(ConfigError, match=r"peft_config\.r: RFLoraConfig\.r must be an integer >= 1.*got 0"):
        edit_spec(spec, {"r": 0})
    with pytest.raises(ConfigError, match=r"training_args\.learning_rate: .* got -0\.5"):
        edit_spec(spec, {"learning_rate": -0.5})
    assert spec.model_config.peft_config.r == 8  # untouched


def test_the_edges_of_each_range_pass_and_one_step_past_them_is_refused():
    edges = dict(learning_rate=0.0, max_steps=1, num_train_epochs=0, seed=2**32 - 1, adam_beta1=0.0,
                 max_length=None, logging_steps=0.5)  # fmt: skip
    lora = {"r": 1, "lora_dropout": 0.0, "lora_alpha": 1}
    assert len(RFGridSearch(_config(lora=lora, **edges)).expand()) == 1
    past = {"learning_rate": -1e-9, "seed": 2**32, "adam_beta1": 1.0, "logging_steps": 0}
    for field, value in past.items():
        assert f"configs[0].training_args.{field}: " in _refused(
            _config(lora=lora, **{**edges, field: value})
        )
    assert "configs[0].peft_config.lora_dropout: " in _refused(_config(lora={**lora, "lora_dropout": 1.0}))
    # eval_steps=0 means "as logging_steps" to transformers: legal, so not refused
    assert len(RFGridSearch(_config(eval_strategy="steps", eval_steps=0)).expand()) == 1
