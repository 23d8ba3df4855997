"""Legacy-field translation and CPU fallbacks at materialization."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import trl

from rapidfire_core.automl import RFDPOConfig, RFGRPOConfig, RFSFTConfig
from rapidfire_core.automl.translate import assume_gpu, gpu_available, legacy_fields_for
from rapidfire_core.errors import ConfigError, ConfigTranslationWarning
from tests.seed_configs import blog_dpo_config


@pytest.fixture(autouse=True)
def _no_gpu():
    with assume_gpu(False):
        yield


def seed_dpo_config() -> RFDPOConfig:
    """base_dpo_config of seed 000 (the DPO blog), verbatim."""
    return blog_dpo_config()


def _materialize(cfg, **overrides):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = cfg.to_trl(**overrides)
    return out, [str(w.message) for w in caught if issubclass(w.category, ConfigTranslationWarning)]


def test_seed_dpo_config_materializes_on_cpu_with_translations():
    base = seed_dpo_config()
    variant = base.copy()
    variant.loss_type = "robust"
    variant.beta = 0.1
    args, messages = _materialize(variant, output_dir="/tmp/rf-dpo")
    assert type(args) is trl.DPOConfig
    assert args.loss_type == ["robust"] and args.beta == 0.1
    assert args.warmup_steps == 0.1 and args.get_warmup_steps(100) == 10  # ratio semantics of a float < 1
    assert args.optim.value == "adamw_torch"
    assert args.use_cpu is True and args.bf16 is False and args.fp16 is False
    assert args.max_length == 1024 and args.output_dir == "/tmp/rf-dpo"
    assert all(len(m.splitlines()) == 1 and m.startswith("RFDPOConfig: ") for m in messages)
    joined = "\n".join(messages)
    for needle in (
        "warmup_ratio=0.1 -> warmup_steps=0.1",
        "max_prompt_length=512, max_completion_length=512 dropped",
        "model_adapter_name='default' dropped",
        "ref_adapter_name='reference' dropped",
        "force_use_ref_model=False dropped",
        "optim='paged_adamw_8bit' -> 'adamw_torch'",
    ):
        assert needle in joined, needle
    assert "adapter disabled" in joined
    assert len(messages) == 6
    assert base.loss_type == "sigmoid"  # the copy's edits did not leak back


def test_dpo_prompt_and_completion_lengths_become_max_length_when_unset():
    args, messages = _materialize(
        RFDPOConfig(max_prompt_length=128, max_completion_length=64), output_dir="/tmp/x"
    )
    assert args.max_length == 192
    assert any("-> max_length=192" in m for m in messages)


def test_legacy_fields_follow_the_installed_trl_not_a_version_number():
    dpo_fields = {f.name for f in dataclasses.fields(trl.DPOConfig)}
    grpo_fields = {f.name for f in dataclasses.fields(trl.GRPOConfig)}
    assert ("max_prompt_length" in legacy_fields_for("DPO", dpo_fields)) == (
        "max_prompt_length" not in dpo_fields
    )
    # GRPO still has max_completion_length: an ordinary field, passed through without a warning
    assert "max_completion_length" in grpo_fields
    assert "max_completion_length" not in legacy_fields_for("GRPO", grpo_fields)
    args, messages = _materialize(
        RFGRPOConfig(max_completion_length=64, num_generations=2, per_device_train_batch_size=2),
        output_dir="/tmp/x",
    )
    assert args.max_completion_length == 64 and not any("max_completion_length" in m for m in messages)
    # if a future TRL brings a field back, it stops being legacy
    assert "max_prompt_length" not in legacy_fields_for("DPO", dpo_fields | {"max_prompt_length"})
    # DPO-only legacy names are unknown on other trainers
    with pytest.raises(ConfigError, match="RFSFTConfig: unknown field 'model_adapter_name'"):
        RFSFTConfig(model_adapter_name="default")


def test_grpo_max_prompt_length_dropped_and_sft_max_seq_length_renamed():
    args, messages = _materialize(
        RFGRPOConfig(max_prompt_length=256, num_generations=2, per_device_train_batch_size=2),
        output_dir="/tmp/x",
    )
    assert any("max_prompt_length=256 dropped" in m for m in messages)
    args, messages = _materialize(RFSFTConfig(max_seq_length=333), output_dir="/tmp/x")
    assert args.max_length == 333 and any("max_seq_length=333 -> max_length=333" in m for m in messages)


def test_warmup_ratio_validation_and_precedence():
    with pytest.raises(ConfigError, match=r"warmup_ratio must be in \[0, 1\)"):
        RFSFTConfig(warmup_ratio=1.5).to_trl(output_dir="/tmp/x")
    args, messages = _materialize(RFSFTConfig(warmup_ratio=0.2, warmup_steps=7), output_dir="/tmp/x")
    assert args.warmup_steps == 7 and any("warmup_ratio=0.2 ignored" in m for m in messages)


def test_fp16_on_cpu_becomes_false_with_one_warning():
    assert gpu_available() is False
    args, messages = _materialize(RFSFTConfig(fp16=True), output_dir="/tmp/x")
    assert args.fp16 is False and args.use_cpu is True
    assert messages == [
        "RFSFTConfig: fp16=True -> False: no usable GPU (torch.cuda.is_available() is False); "
        "training runs in float32 on CPU"
    ]
    args, messages = _materialize(RFSFTConfig(bf16=True, optim="adamw_bnb_8bit"), output_dir="/tmp/x")
    assert args.bf16 is False and args.optim.value == "adamw_torch" and len(messages) == 2


def test_gpu_settings_kept_when_a_gpu_is_available():
    with assume_gpu(True):
        kwargs, messages = RFSFTConfig(fp16=True, optim="paged_adamw_8bit").trl_kwargs(output_dir="/tmp/x")
    assert kwargs["fp16"] is True and kwargs["optim"] == "paged_adamw_8bit"
    assert "use_cpu" not in kwargs and "bf16" not in kwargs and messages == []
    kwargs, _ = RFSFTConfig().trl_kwargs(output_dir="/tmp/x")  # outside the block: the probe is restored
    assert kwargs["use_cpu"] is True and kwargs["bf16"] is False


def test_seed_dpo_group_warns_at_expand_once_and_engine_calls_stay_quiet():
    from rapidfire_core.automl import List, RFGridSearch, RFLoraConfig, RFModelConfig

    base = seed_dpo_config()
    variants = []
    for loss, beta in (("sigmoid", 0.1), ("robust", 0.1), ("sigmoid", 0.01)):
        c = base.copy()
        c.loss_type = loss
        c.beta = beta
        variants.append(
            RFModelConfig(
                model_name="m",
                ref_model_name=None,
                peft_config=RFLoraConfig(r=64),
                training_args=c,
                tokenizer_kwargs={"padding_side": "left"},
            )
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = RFGridSearch(configs=List(variants), trainer_type="DPO").expand()
        expand_msgs = [str(w.message) for w in caught if issubclass(w.category, ConfigTranslationWarning)]
        caught.clear()
        args = runs[1].training_args(output_dir="/tmp/rf-engine", report_to="none")
        later = [w for w in caught if issubclass(w.category, ConfigTranslationWarning)]
    assert len(runs) == 3 and len(expand_msgs) == 3 * 6  # each run's config warns once, at expand
    assert later == []
    assert args.loss_type == ["robust"] and args.warmup_steps == 0.1 and args.optim.value == "adamw_torch"
    assert [r.knobs["train.beta"] for r in runs] == [0.1, 0.1, 0.01]
