"""RF configs: real subclasses, validation, copy/assignment, repr, materialization."""

from __future__ import annotations

import peft
import pytest
import trl

from rapidfire_core.automl import (
    List,
    Range,
    RFDPOConfig,
    RFGRPOConfig,
    RFLoraConfig,
    RFModelConfig,
    RFSFTConfig,
)
from rapidfire_core.automl.translate import assume_gpu
from rapidfire_core.errors import ConfigError


@pytest.fixture(autouse=True)
def _no_gpu():
    with assume_gpu(False):
        yield


def test_rf_configs_are_real_subclasses():
    assert isinstance(RFSFTConfig(), trl.SFTConfig)
    assert isinstance(RFDPOConfig(), trl.DPOConfig)
    assert isinstance(RFGRPOConfig(), trl.GRPOConfig)
    assert isinstance(RFLoraConfig(), peft.LoraConfig)


def test_every_field_stored_with_library_defaults_and_user_values():
    cfg = RFSFTConfig(learning_rate=List([1e-3, 1e-4]), max_steps=128)
    assert cfg.learning_rate == List([1e-3, 1e-4])
    assert cfg.max_steps == 128
    assert (
        cfg.per_device_train_batch_size
        == trl.SFTConfig.__dataclass_fields__["per_device_train_batch_size"].default
    )
    assert cfg.user_kwargs() == {"learning_rate": List([1e-3, 1e-4]), "max_steps": 128}
    lora = RFLoraConfig(r=8)
    assert lora.rank_pattern == {} and lora.rank_pattern is not RFLoraConfig().rank_pattern  # default_factory


def test_unknown_field_names_field_class_and_suggestion():
    with pytest.raises(ConfigError) as err:
        RFSFTConfig(learning_rat=1e-3)
    msg = str(err.value)
    assert "learning_rat" in msg and "RFSFTConfig" in msg and "did you mean 'learning_rate'" in msg
    with pytest.raises(
        ConfigError, match=r"RFLoraConfig: unknown field 'lora_alpah'; did you mean 'lora_alpha'"
    ):
        RFLoraConfig(lora_alpah=16)


def test_wrong_type_names_field_expected_and_got():
    with pytest.raises(ConfigError) as err:
        RFSFTConfig(max_steps="128")
    msg = str(err.value)
    assert "RFSFTConfig.max_steps" in msg and "expected int" in msg and "str '128'" in msg
    with pytest.raises(ConfigError, match=r"RFSFTConfig.learning_rate: expected float"):
        RFSFTConfig(learning_rate=List([1e-3, "fast"]))  # List checked element-wise
    with pytest.raises(ConfigError, match=r"RFLoraConfig.r: expected int"):
        RFLoraConfig(r=Range(4.0, 64.0))  # a float Range for an int field
    with pytest.raises(ConfigError, match=r"RFLoraConfig.bias: expected one of 'none', 'all', 'lora_only'"):
        RFLoraConfig(bias="nonee")
    with pytest.raises(ConfigError, match="RFLoraConfig.r: expected int"):
        RFLoraConfig(r=True)  # a bool is not an int here
    with pytest.raises(ConfigError, match="2 invalid fields"):
        RFSFTConfig(max_steps=1.5, learning_rate="x")


def test_type_check_accepts_what_the_libraries_accept():
    RFSFTConfig(
        learning_rate=1, logging_steps=0.5, warmup_steps=0.1
    )  # int for float; float logging/warmup steps
    RFSFTConfig(learning_rate=Range(1e-5, 1e-3, log=True), optim="adamw_torch", lr_scheduler_type="cosine")
    RFDPOConfig(loss_type="sigmoid")  # list[str] field given one str, as TRL wraps it
    RFLoraConfig(
        init_lora_weights="pissa_niter_4", target_modules="all-linear", task_type=peft.TaskType.CAUSAL_LM
    )
    RFLoraConfig(target_modules=List([["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"]]))
    with pytest.raises(ConfigError):
        RFLoraConfig(target_modules=List([["q_proj"], [3]]))


def test_copy_is_independent_and_assignment_is_validated():
    def reward(completions, **kwargs):
        return [0.0] * len(completions)

    base = RFDPOConfig(loss_type="sigmoid", beta=0.1, gradient_checkpointing_kwargs={"use_reentrant": True})
    c = base.copy()
    c.loss_type = "robust"
    c.beta = 0.1
    c.gradient_checkpointing_kwargs["use_reentrant"] = False
    assert base.loss_type == "sigmoid" and c.loss_type == "robust"
    assert base.gradient_checkpointing_kwargs == {"use_reentrant": True}
    c.learning_rate = 5e-5  # a field the user had not set becomes user-set
    assert "learning_rate" in c.user_kwargs() and "learning_rate" not in base.user_kwargs()
    with pytest.raises(ConfigError, match="did you mean 'beta'"):
        c.betta = 0.2
    with pytest.raises(ConfigError, match="RFDPOConfig.beta: expected float"):
        c.beta = "high"
    assert c.beta == 0.1

    mc = RFModelConfig(
        model_name="m", reward_funcs=[reward], peft_config=RFLoraConfig(target_modules=["q_proj"])
    )
    mc2 = mc.copy()
    mc2.peft_config.target_modules.append("v_proj")
    assert mc.peft_config.target_modules == ["q_proj"]
    assert mc2.reward_funcs[0] is reward  # callables are shared, not copied


def test_repr_shows_only_user_set_fields():
    assert (
        repr(RFSFTConfig(learning_rate=1e-3, max_steps=8)) == "RFSFTConfig(learning_rate=0.001, max_steps=8)"
    )
    assert repr(RFLoraConfig(r=List([8, 32]))) == "RFLoraConfig(r=List([8, 32]))"
    assert str(RFSFTConfig()) == "RFSFTConfig()"


def test_materialize_requires_concrete_config():
    with pytest.raises(ConfigError, match="'r' still holds List"):
        RFLoraConfig(r=List([8, 32])).to_peft()
    with pytest.raises(ConfigError, match="'learning_rate' still holds Range"):
        RFSFTConfig(learning_rate=Range(1e-5, 1e-3)).to_trl(output_dir="/tmp/x")


def test_to_peft_and_to_trl_build_library_objects():
    lora = RFLoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], bias="none").to_peft()
    assert type(lora) is peft.LoraConfig and lora.r == 16 and lora.target_modules == {"q_proj", "v_proj"}
    sft = RFSFTConfig(learning_rate=1e-3, max_steps=4).to_trl(output_dir="/tmp/rf-x", report_to="none")
    assert type(sft) is trl.SFTConfig and sft.learning_rate == 1e-3 and sft.output_dir == "/tmp/rf-x"
    with pytest.raises(ConfigError, match="not_a_field"):
        RFSFTConfig().to_trl(not_a_field=1)


def test_library_post_init_errors_become_config_errors_naming_the_config():
    with pytest.raises(ConfigError, match=r"RFDPOConfig: trl.DPOConfig rejected.*loss_weights"):
        RFDPOConfig(loss_type=["sigmoid", "sft"], loss_weights=[1.0]).to_trl(output_dir="/tmp/x")
    with pytest.raises(ConfigError, match=r"RFLoraConfig: peft.LoraConfig rejected.*layers_to_transform"):
        RFLoraConfig(target_modules="all-linear", layers_to_transform=[0]).to_peft()


@pytest.mark.filterwarnings(
    "ignore::FutureWarning"
)  # the plain GRPOConfig's own gradient_checkpointing notice
def test_from_library_round_trips_plain_configs():
    plain = trl.GRPOConfig(
        output_dir="/tmp/x",
        use_cpu=True,
        bf16=False,
        learning_rate=2e-6,
        num_generations=4,
        per_device_train_batch_size=4,
    )
    rf = RFGRPOConfig.from_library(plain)
    assert rf.is_user_set("learning_rate") and rf.learning_rate == 2e-6
    again = rf.to_trl(output_dir="/tmp/y")  # post_init-derived values do not clash when re-passed
    assert again.generation_batch_size == plain.generation_batch_size and again.num_generations == 4
    lora = RFLoraConfig.from_library(peft.LoraConfig(r=4, target_modules=["v_proj", "q_proj"]))
    assert lora.target_modules == ["q_proj", "v_proj"] and lora.to_peft().r == 4
