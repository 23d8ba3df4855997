"""Generation metrics on the eval set (the seeds' `compute_metrics` + `generation_config`).

RapidFire's `compute_metrics(eval_preds)` receives `(predictions, references)` as decoded
TEXTS (not logits, unlike `transformers.Trainer`). At each evaluation (after every chunk, and
any the user's eval_strategy asks for) this module generates a completion for every eval prompt
with the run's adapter active, then calls the user's function; its keys are logged under the
names it returns, as RapidFire AI logs them (`{"rougeL": 0.4}` is the metric `rougeL`).
Generation may sample, so the global RNG is forked: the training stream of the run is untouched.

Each eval row gives one (prompt, reference) pair, read as RapidFire AI reads them; a row is the
formatting function's output over the raw row's columns (so `response` of the raw row is seen):

    input + output          prompt = input, reference = output
    prompt + completion     prompt = prompt (a chat list through the chat template with the
                            generation prompt), reference = completion (of a chat list: the
                            last message's content)
    text                    prompt = text, reference = response, else instruction, else text
    instruction + response  prompt = instruction, reference = response
    prompt + chosen         (preference rows) prompt = prompt, reference = chosen
    messages                prompt = every message before the last, reference = its content

the first rule that matches wins; a row whose prompt or reference is empty is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


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


# Column sets of the rules above, in their order (a row matches the first set it holds).
GENERATION_COLUMNS: tuple[tuple[str, ...], ...] = (
    ("input", "output"),
    ("prompt", "completion"),
    ("text",),
    ("instruction", "response"),
    ("prompt", "chosen"),
    ("messages",),
)


def generation_columns_problem(columns: set[str]) -> str | None:
    """None when rows with `columns` give (prompt, reference) pairs, else what is missing."""
    if any(set(rule) <= columns for rule in GENERATION_COLUMNS):
        return None
    options = " | ".join(" + ".join(rule) for rule in GENERATION_COLUMNS)
    return (
        f"compute_metrics generates a completion for each eval row, but the eval rows have "
        f"{sorted(columns)}: give rows with {options}"
    )


def _last_content(value: Any) -> str:
    if isinstance(value, list):
        return str(value[-1].get("content", "")) if value and isinstance(value[-1], dict) else ""
    return "" if value is None else str(value)


def prompt_and_reference(row: dict[str, Any]) -> tuple[Any, str] | None:
    """The (prompt, reference) of one eval row (module docstring), or None when it gives none.
    A chat prompt stays a message list (the chat template applies at generation)."""
    pair: tuple[Any, Any] | None = None
    if "input" in row and "output" in row:
        pair = row["input"], row["output"]
    elif "prompt" in row and "completion" in row:
        pair = row["prompt"], _last_content(row["completion"])
    elif "text" in row:
        pair = row["text"], row.get("response") or row.get("instruction") or row["text"]
    elif "instruction" in row and "response" in row:
        pair = row["instruction"], row["response"]
    elif "prompt" in row and "chosen" in row:
        pair = row["prompt"], _last_content(row["chosen"])
    elif isinstance(row.get("messages"), list) and len(row["messages"]) > 1:
        pair = row["messages"][:-1], _last_content(row["messages"])
    if pair is None:
        return None
    prompt, reference = pair
    reference = "" if reference is None else str(reference).strip()
    empty_prompt = not prompt if isinstance(prompt, list) else not str(prompt or "").strip()
    if empty_prompt or not reference:
        return None
    return (prompt if isinstance(prompt, list) else str(prompt).strip()), reference


def eval_rows_over_raw(raw: Any, formatted: Any) -> list[dict[str, Any]]:
    """Each formatted eval row over its raw row's columns (a formatting function that returns
    only `text` still lets the raw `response` be the reference, as in RapidFire AI, where the
    formatted dataset keeps the raw columns). `raw`, `formatted`: datasets of equal length."""
    formatted_rows = formatted.to_list()
    if raw is None or raw is formatted or len(raw) != len(formatted_rows):
        return formatted_rows
    return [{**r, **f} for r, f in zip(raw.to_list(), formatted_rows, strict=True)]


def make_generation_eval(
    model,
    tokenizer,
    eval_rows: Sequence[dict[str, Any]],
    compute_metrics: Callable[[tuple[list[str], list[str]]], dict[str, float]],
    generation_config: dict[str, Any] | None,
    batch_size: int,
) -> Callable[[int, float | None], dict[str, float]]:
    """A closure `(step, epoch) -> {metric: value}` for one run (the names compute_metrics
    returns). `eval_rows`: the formatted eval rows over their raw columns (module docstring)."""
    pairs = [pair for pair in map(prompt_and_reference, eval_rows) if pair is not None]
    if not pairs:
        raise ValueError(
            generation_columns_problem(set().union(*(set(r) for r in eval_rows)))
            or "compute_metrics: no eval row has a non-empty prompt and reference"
        )
    prompts = [prompt for prompt, _ in pairs]
    references = [reference for _, reference in pairs]

    def evaluate(step: int, epoch: float | None) -> dict[str, float]:
        predictions = generate_completions(model, tokenizer, prompts, generation_config or {}, batch_size)
        metrics = compute_metrics((predictions, references)) or {}
        return {str(k): float(v) for k, v in metrics.items()}

    return evaluate
