"""Generation metrics on the eval set (the seeds' `compute_metrics` + `generation_config`).

RapidFire's `compute_metrics(eval_preds)` receives `(predictions, references)` as decoded
TEXTS (not logits, unlike `transformers.Trainer`). At each evaluation (after every chunk, and
any the user's eval_strategy asks for) this module generates a completion for every eval prompt
with the run's adapter active, then calls the user's function; its keys are logged with an
`eval_` prefix. Generation may sample, so the global RNG is forked: the training stream of the
run is untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


def _as_text(value: Any) -> str:
    if isinstance(value, list):  # conversational: [{"role": ..., "content": ...}, ...]
        return "".join(str(m.get("content", "")) for m in value if isinstance(m, dict))
    return str(value)


def _prompt_text(prompt: Any, tokenizer) -> str:
    if isinstance(prompt, list):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return str(prompt)


def generate_completions(
    model, tokenizer, prompts: Sequence[Any], generation_config: dict[str, Any], batch_size: int
) -> list[str]:
    """Decoded completions (new tokens only) for each prompt, in order."""
    from transformers import GenerationConfig

    config = dict(generation_config)
    config.setdefault("max_new_tokens", 64)
    if any(k in config for k in ("temperature", "top_p", "top_k")):
        config.setdefault("do_sample", True)
    config.setdefault("pad_token_id", tokenizer.pad_token_id)
    gen_config = GenerationConfig(**config)
    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only generation needs left padding
    was_training = model.training
    model.eval()
    outputs: list[str] = []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for start in range(0, len(prompts), batch_size):
                texts = [_prompt_text(p, tokenizer) for p in prompts[start : start + batch_size]]
                enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                out = model.generate(**enc, generation_config=gen_config)
                new_tokens = out[:, enc["input_ids"].shape[1] :]
                outputs.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return outputs


def make_generation_eval(
    model,
    tokenizer,
    eval_rows: Sequence[dict[str, Any]],
    compute_metrics: Callable[[tuple[list[str], list[str]]], dict[str, float]],
    generation_config: dict[str, Any] | None,
    batch_size: int,
) -> Callable[[int, float | None], dict[str, float]]:
    """A closure `(step, epoch) -> {"eval_<metric>": value}` for one run."""
    prompts = [row["prompt"] for row in eval_rows]
    references = [_as_text(row.get("completion", row.get("chosen", ""))) for row in eval_rows]

    def evaluate(step: int, epoch: float | None) -> dict[str, float]:
        predictions = generate_completions(model, tokenizer, prompts, generation_config or {}, batch_size)
        metrics = compute_metrics((predictions, references)) or {}
        return {(k if k.startswith("eval_") else f"eval_{k}"): float(v) for k, v in metrics.items()}

    return evaluate
