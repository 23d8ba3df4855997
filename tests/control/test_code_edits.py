"""Which clone edits can load code: the dashboard refuses those (rapidfire_core.control.code_edits)."""

from __future__ import annotations

import pytest

from rapidfire_core.control.code_edits import code_loading_changes, code_loading_reason


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("model_name", "/tmp/evil"),
        ("ref_model_name", "org/model"),
        ("tokenizer", "org/tok"),
        ("model_kwargs.trust_remote_code", True),
        ("model_kwargs.revision", "main"),
        ("model_kwargs.attn_implementation", "kernels-community/flash-attn"),
        ("model_kwargs", {"torch_dtype": "float32", "trust_remote_code": True}),
        ("tokenizer_kwargs.trust_remote_code", True),
        ("train.model_init_kwargs", {"trust_remote_code": True}),
        ("generation_config", {"custom_generate": "org/repo"}),
        ("reward_funcs", "org/reward-model"),
        ("train.output_dir", "/home/victim/.ssh"),
        ("logging_dir", "/tmp/x"),
        ("train.deepspeed", "ds.json"),
        ("train.torch_compile_backend", "evil_backend"),
        ("train.use_liger_kernel", True),
        ("train.push_to_hub", True),
        ("train.hub_model_id", "attacker/model"),
        ("train.report_to", ["wandb"]),
        ("train.vllm_server_host", "10.0.0.1"),
        ("train.chat_template_path", "t.jinja"),
        ("train.resume_from_checkpoint", "/tmp/ckpt"),
        ("trust_remote_code", True),
        ("train.dataset_kwargs", {"trust_remote_code": True}),
        ("train.generation_kwargs", {"do_sample": True}),
        ("peft.megatron_core", "evil.module"),
        ("peft.base_model_name_or_path", "/tmp/evil"),
    ],
)
def test_edits_that_can_load_code_or_touch_files_are_named(key, value):
    reason = code_loading_reason(key, value)
    assert reason, key
    assert code_loading_changes({key: value}) == {key: reason}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("learning_rate", 1e-4),
        ("train.learning_rate", 5e-4),
        ("peft.r", 16),
        ("lora_alpha", 32),
        ("peft.target_modules", ["q_proj", "v_proj"]),
        ("peft.modules_to_save", ["lm_head"]),
        ("train.lr_scheduler_type", "cosine"),
        ("train.loss_type", "sigmoid"),
        ("train.max_length", 128),
        ("model_kwargs.torch_dtype", "bfloat16"),
        ("model_kwargs.attn_implementation", "sdpa"),
        ("model_kwargs", {"dtype": "float32", "use_cache": False}),
        ("train.dataset_kwargs", {"skip_prepare_dataset": True}),
    ],
)
def test_numbers_flags_and_choices_are_not_code_loading(key, value):
    assert code_loading_reason(key, value) is None
    assert code_loading_changes({key: value}) == {}
