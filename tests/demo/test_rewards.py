"""GRPO reward functions: TRL's signature, plain and conversational completions."""

from __future__ import annotations

import pytest

from rapidfire_core.demo.rewards import (
    answer_reward,
    completion_text,
    format_reward,
    length_penalty,
    make_length_penalty,
)


def conv(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def test_answer_reward_plain_and_conversational():
    completions = ["7", "The answer is 7.", "3+4=7", "8", "seven", " -2 ", "12 or 13"]
    answers = ["7", "7", "7", "7", "7", "-2", "12"]
    expected = [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    assert answer_reward(completions, answer=answers) == expected
    assert answer_reward([conv(c) for c in completions], answer=answers) == expected


def test_answer_reward_accepts_trl_kwargs_and_int_answers():
    out = answer_reward(
        completions=["4", "5"],
        prompts=["2+2 =", "2+2 ="],
        completion_ids=[[1], [2]],
        answer=[4, 4],
        trainer_state=None,
    )
    assert out == [1.0, 0.0]


def test_answer_reward_needs_answer_column():
    with pytest.raises(KeyError, match="answer"):
        answer_reward(["1"])


def test_format_reward():
    completions = ["42", " 42. ", "-3", "it is 42", "no idea", ""]
    assert format_reward(completions) == [1.0, 1.0, 1.0, 0.5, 0.0, 0.0]
    assert format_reward([conv(c) for c in completions]) == [1.0, 1.0, 1.0, 0.5, 0.0, 0.0]


def test_length_penalty():
    assert length_penalty(["x" * 10, "x" * 16, "x" * 48, "x" * 80, "x" * 500]) == [0.0, 0.0, -0.5, -1.0, -1.0]
    assert length_penalty([conv("x" * 48)]) == [-0.5]
    short = make_length_penalty(free_chars=0, span_chars=10)
    assert short(["x" * 5]) == [-0.5]
    assert short.__name__ == "length_penalty"


def test_completion_text_shapes():
    assert completion_text("a") == "a"
    assert completion_text({"role": "assistant", "content": "b"}) == "b"
    assert (
        completion_text([{"role": "assistant", "content": "c"}, {"role": "assistant", "content": "d"}])
        == "cd"
    )
