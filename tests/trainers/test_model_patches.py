"""The audit of what trainers write on the model object (`trainers.model_patches`) is complete, and
the runs' own writes are put back whenever they compute.

Each stock TRL trainer (SFT, DPO, GRPO) is built on a fresh PEFT model and trained one step; the
model object is compared before and after (instance attributes, hooks, module tree, config,
dropout, checkpointing, dtypes). Every difference must be one the audit names: a newer TRL,
transformers or PEFT that writes something else on the model fails here until the audit says how
the engine keeps it per run."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

from rapidfire_core.demo.data import (
    formatting_function,
    math_prompt_dataset,
    preference_dataset,
    support_dataset,
)
from rapidfire_core.demo.rewards import format_reward
from rapidfire_core.trainers.model_patches import (
    MODEL_PATCHES,
    RunModelSettings,
    capture_run_settings,
    forward_key,
    transformers_model,
)

COMMON = dict(
    bf16=False, max_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=1
)


def _snapshot(model: torch.nn.Module) -> dict[tuple, object]:
    """What a trainer could write on ``model``, flattened to {(kind, where, name): value}."""
    state: dict[tuple, object] = {}
    for path, module in model.named_modules():
        state[("module", path, "type")] = type(module).__qualname__
        for name, value in vars(module).items():
            if callable(value) and not isinstance(value, torch.nn.Module) and not name.startswith("__"):
                func = getattr(value, "__func__", value)
                code = getattr(func, "__code__", None)  # its own name (functools.wraps copies __qualname__)
                state[("callable", path, name)] = code.co_qualname if code else type(func).__qualname__
        for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            hooks = getattr(module, kind, {})
            names = sorted(getattr(h, "__qualname__", type(h).__qualname__) for h in hooks.values())
            state[("hooks", path, kind)] = tuple(names)
        if isinstance(module, torch.nn.Dropout):
            state[("dropout", path, "p")] = module.p
        if hasattr(module, "gradient_checkpointing"):
            state[("checkpointing", path, "on")] = bool(module.gradient_checkpointing)
        for name, param in module.named_parameters(recurse=False):
            state[("dtype", path, name)] = param.dtype
    for name, value in transformers_model(model).config.to_dict().items():
        state[("config", "", name)] = repr(value)
    for name, value in transformers_model(model).generation_config.to_dict().items():
        state[("generation_config", "", name)] = repr(value)
    state[("tags", "", "model_tags")] = repr(getattr(transformers_model(model), "model_tags", None))
    return state


def _diff(before: dict, after: dict) -> set[tuple]:
    keys = set(before) | set(after)
    return {key for key in keys if before.get(key, "<absent>") != after.get(key, "<absent>")}


def _explain(key: tuple, after: dict) -> str | None:
    """The `MODEL_PATCHES` row a difference belongs to (its `what`), or None if the audit lacks it."""
    kind, path, name = key
    if kind == "callable" and name == "forward" and "add_fused_lm_head" in str(after.get(key)):
        return "model.forward = fused-LM-head wrapper"
    if kind == "config" and name == "use_cache":
        return "model.config.use_cache"
    if kind in ("config", "generation_config") and name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        return "config / generation_config special-token ids"
    if kind == "checkpointing":
        return "gradient checkpointing on the decoder layers"
    if kind == "callable" and name == "_gradient_checkpointing_func":
        return "gradient checkpointing on the decoder layers"
    if kind == "hooks" and name == "_forward_hooks" and "make_inputs_require_grads" in str(after.get(key)):
        return "forward hook making the input embeddings' output require grad"
    if kind == "callable" and name == "_require_grads_hook":
        return "forward hook making the input embeddings' output require grad"
    if kind == "dropout":
        return "Dropout.p = 0 on every dropout module"
    if kind == "tags":
        return "model_tags; PEFT 'default' / 'ref' adapters"
    if ".ref." in path or path.endswith(".ref"):
        return "model_tags; PEFT 'default' / 'ref' adapters"
    return None


def _tiny_peft_model(model_dir: str, lora_dropout: float = 0.1):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=lora_dropout, target_modules=["q_proj", "v_proj"])
    return get_peft_model(model, lora), tokenizer


def _build(trainer_type: str, model, tokenizer, tmp_path, **overrides):
    out = str(tmp_path / trainer_type)
    if trainer_type == "SFT":
        args = SFTConfig(output_dir=out, max_length=48, per_device_train_batch_size=2, **COMMON, **overrides)
        rows = support_dataset(n=8, seed=1)
        rows = rows.map(formatting_function, remove_columns=rows.column_names)
        return SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    if trainer_type == "DPO":
        args = DPOConfig(output_dir=out, max_length=48, per_device_train_batch_size=2, **COMMON, **overrides)
        return DPOTrainer(
            model=model, args=args, train_dataset=preference_dataset(n=8, seed=1), processing_class=tokenizer
        )
    args = GRPOConfig(
        output_dir=out, num_generations=2, per_device_train_batch_size=2, max_completion_length=4,
        **COMMON, **overrides,
    )  # fmt: skip
    return GRPOTrainer(
        model=model, reward_funcs=[format_reward], args=args, train_dataset=math_prompt_dataset(n=8),
        processing_class=tokenizer,
    )  # fmt: skip


@pytest.mark.parametrize("trainer_type", ["SFT", "DPO", "GRPO"])
def test_every_write_a_trainer_makes_on_the_model_is_in_the_audit(trainer_type, tmp_path, tiny_model_dir):
    model, tokenizer = _tiny_peft_model(tiny_model_dir)
    before = _snapshot(model)
    extra = {"disable_dropout": True} if trainer_type in ("DPO", "GRPO") else {}
    trainer = _build(trainer_type, model, tokenizer, tmp_path, **extra)
    trainer.train()
    after = _snapshot(model)
    known = {patch.what for patch in MODEL_PATCHES}
    unexplained = sorted(k for k in _diff(before, after) if _explain(k, after) is None)
    assert not unexplained, (
        f"writes on the model the audit (trainers.model_patches) does not name: {unexplained}"
    )
    explained = {_explain(k, after) for k in _diff(before, after)}
    assert explained <= known, explained - known
    assert "model.forward = fused-LM-head wrapper" in explained  # the audit still sees TRL's wrapper


def test_an_unknown_write_on_the_model_is_reported(tiny_model_dir):
    # The check above can fail: a hook nobody audited shows up as a difference it cannot explain.
    model, _ = _tiny_peft_model(tiny_model_dir)
    before = _snapshot(model)
    transformers_model(model).model.norm.register_forward_hook(lambda module, args, out: out * 2)
    changed = _diff(before, _snapshot(model))
    assert changed and all(_explain(k, _snapshot(model)) is None for k in changed)


def test_each_run_computes_with_the_forward_its_own_trainer_installed(tmp_path, tiny_model_dir):
    # Two GRPO trainers on one PeftModel, temperatures 0.4 and 1.7: each one's captured settings,
    # applied, give its own temperature's log-probs (TRL divides the logits by it), whichever
    # trainer was built last.
    model, tokenizer = _tiny_peft_model(tiny_model_dir, lora_dropout=0.0)
    settings: dict[float, RunModelSettings] = {}
    for temperature in (0.4, 1.7):
        holder: list[RunModelSettings] = []
        with capture_run_settings(model, holder):
            _build("GRPO", model, tokenizer, tmp_path / str(temperature), temperature=temperature)
        settings[temperature] = holder[0]
    assert forward_key(settings[0.4].forward) != forward_key(settings[1.7].forward)
    ids = torch.tensor([[5, 9, 13, 21, 8]])
    labels = ids.clone()
    model.eval()
    logps = {}
    for temperature in (1.7, 0.4, 1.7):
        settings[temperature].apply()
        with torch.no_grad():
            logps[temperature] = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs
    base = transformers_model(model)
    with torch.no_grad():
        logits = base.__class__.forward(base, input_ids=ids).logits[:, :-1].float()
    for temperature, got in logps.items():
        expected = torch.log_softmax(logits / temperature, dim=-1).gather(-1, labels[:, 1:, None])[..., 0]
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
