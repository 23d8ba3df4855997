"""Generation metrics: each eval row's (prompt, reference) is taken as RapidFire AI takes it,
and the user's metric names are logged as returned."""

from __future__ import annotations

import pytest
from datasets import Dataset

from rapidfire_core.trainers.generation_eval import (
    eval_rows_over_raw,
    generation_columns_problem,
    make_generation_eval,
    prompt_and_reference,
)

CHAT_PROMPT = [{"role": "user", "content": "Where is my order?"}]


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"input": "2+2?", "output": "4"}, ("2+2?", "4")),
        ({"prompt": CHAT_PROMPT, "completion": [{"role": "assistant", "content": "On its way."}]},
         (CHAT_PROMPT, "On its way.")),
        ({"prompt": "Q: hi\nA:", "completion": " hello"}, ("Q: hi\nA:", "hello")),
        # text rows: the text is the prompt; the reference is the raw row's response
        ({"text": "Question: hi\nAnswer: hello", "response": "hello"}, ("Question: hi\nAnswer: hello", "hello")),
        ({"text": "Question: hi", "instruction": "hi"}, ("Question: hi", "hi")),
        ({"text": "just text"}, ("just text", "just text")),
        ({"instruction": "hi", "response": "hello"}, ("hi", "hello")),
        ({"prompt": "p", "chosen": "c", "rejected": "r"}, ("p", "c")),
        ({"messages": [*CHAT_PROMPT, {"role": "assistant", "content": "Soon."}]}, (CHAT_PROMPT, "Soon.")),
    ],
)  # fmt: skip
def test_each_row_format_gives_its_prompt_and_reference(row, expected):
    assert prompt_and_reference(row) == expected


def test_rows_without_a_prompt_or_reference_are_skipped_and_bad_columns_named():
    assert prompt_and_reference({"text": "   "}) is None
    assert prompt_and_reference({"prompt": "p", "completion": ""}) is None
    assert prompt_and_reference({"answer": "4"}) is None
    assert generation_columns_problem({"text"}) is None
    problem = generation_columns_problem({"prompt", "answer"})
    assert "['answer', 'prompt']" in problem and "prompt + completion" in problem


def test_formatted_rows_keep_their_raw_columns_underneath():
    raw = Dataset.from_list([{"instruction": "hi", "response": "hello"}])
    formatted = Dataset.from_list([{"text": "Question: hi\nAnswer: hello"}])
    (row,) = eval_rows_over_raw(raw, formatted)
    assert row == {"instruction": "hi", "response": "hello", "text": "Question: hi\nAnswer: hello"}
    assert prompt_and_reference(row) == ("Question: hi\nAnswer: hello", "hello")


def test_metric_names_are_logged_as_compute_metrics_returns_them(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    seen = []

    def compute_metrics(eval_preds):
        predictions, references = eval_preds
        seen.append((len(predictions), list(references)))
        return {"rougeL": 0.25, "eval_bleu": 0.5}

    rows = [{"text": "Question: hi\nAnswer: hello", "response": "hello"}, {"text": "  "}]
    evaluate = make_generation_eval(model, tokenizer, rows, compute_metrics, {"max_new_tokens": 2}, 2)
    assert evaluate(1, None) == {"rougeL": 0.25, "eval_bleu": 0.5}
    assert seen == [(1, ["hello"])]  # the empty row is skipped, as RapidFire AI skips it
