"""Reward functions for GRPO on ``data.math_prompt_dataset`` (TRL's reward signature).

TRL calls ``reward(completions=..., prompts=..., completion_ids=..., **dataset_columns)``
and expects one float (or ``None``) per completion. ``completions`` is a list of
strings for plain-text prompts, or a list of message lists
(``[{"role": "assistant", "content": ...}]``) for conversational ones; both work here.

- ``answer_reward``: 1.0 when the last integer in the completion equals the row's
  ``answer``, else 0.0.
- ``format_reward``: 1.0 when the completion is just an integer (optionally ending
  in ``.``), 0.5 when it contains an integer somewhere, 0.0 otherwise.
- ``length_penalty``: ``-min(1, max(0, chars - 16) / 64)``: free up to 16 chars,
  then linearly down to -1 at 80 chars. ``make_length_penalty`` builds other limits.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

_INT = re.compile(r"-?\d+")
_ONLY_INT = re.compile(r"^\s*-?\d+\s*\.?\s*$")


def completion_text(completion: Any) -> str:
    """The text of one completion: a str, or the concatenated ``content`` of a message list."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, Sequence):
        return "".join(completion_text(m) for m in completion)
    return str(completion)


def _last_int(text: str) -> int | None:
    found = _INT.findall(text)
    return int(found[-1]) if found else None


def answer_reward(completions: list, answer: list | None = None, **kwargs: Any) -> list[float]:
    """1.0 if the completion's last integer equals ``answer`` (the dataset column), else 0.0."""
    if answer is None:
        raise KeyError("answer_reward needs an 'answer' column in the dataset")
    rewards = []
    for completion, expected in zip(completions, answer, strict=True):
        got = _last_int(completion_text(completion))
        rewards.append(1.0 if got is not None and got == int(str(expected).strip()) else 0.0)
    return rewards


def format_reward(completions: list, **kwargs: Any) -> list[float]:
    """1.0 for a bare integer answer, 0.5 if an integer appears somewhere, else 0.0."""
    rewards = []
    for completion in completions:
        text = completion_text(completion)
        rewards.append(1.0 if _ONLY_INT.match(text) else 0.5 if _INT.search(text) else 0.0)
    return rewards


def make_length_penalty(free_chars: int = 16, span_chars: int = 64) -> Callable[..., list[float]]:
    """A reward of 0 up to ``free_chars`` characters, falling linearly to -1 over ``span_chars`` more."""

    def length_penalty(completions: list, **kwargs: Any) -> list[float]:
        return [-min(1.0, max(0, len(completion_text(c)) - free_chars) / span_chars) for c in completions]

    length_penalty.__name__ = "length_penalty"
    return length_penalty


length_penalty = make_length_penalty()
