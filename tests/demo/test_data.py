"""The demo datasets: deterministic, right schema, learnable structure."""

from __future__ import annotations

import re

import pytest

from rapidfire_core.demo import data


@pytest.mark.parametrize(
    "make",
    [data.support_dataset, data.preference_dataset, data.math_prompt_dataset],
    ids=["support", "preference", "math"],
)
def test_same_seed_same_rows_other_seed_other_rows(make):
    a, b, c = make(40, seed=0), make(40, seed=0), make(40, seed=1)
    assert a.to_list() == b.to_list()
    assert a.to_list() != c.to_list()
    assert len(a) == 40


def test_support_schema_and_intents():
    ds = data.support_dataset(n=len(data.INTENTS) * 4, seed=0)
    assert ds.column_names == ["instruction", "response", "intent", "category"]
    assert all(isinstance(v, str) and v for row in ds for v in row.values())
    # Balanced: each block of len(INTENTS) rows holds every intent once.
    counts = {name: ds["intent"].count(name) for name in data.INTENT_NAMES}
    assert set(counts.values()) == {4}
    assert 10 <= len(data.INTENTS) <= 14
    categories = {i.name: i.category for i in data.INTENTS}
    assert all(categories[row["intent"]] == row["category"] for row in ds)


def test_support_response_copies_slots_from_instruction():
    for row in data.support_dataset(n=200, seed=3):
        for order in re.findall(r"#\d{5}", row["instruction"]):
            assert order in row["response"]
        if row["intent"] == "reset_password":
            email = re.search(r"\S+@example\.com", row["instruction"]).group(0)
            assert email.rstrip(".,!?") in row["response"]
        named = re.search(r"(?:this is|my name is) (\w+)", row["instruction"])
        assert row["response"].startswith(f"Hi {named.group(1)}!" if named else "Hello!")


def test_support_response_is_a_function_of_intent_and_slots():
    # Same intent -> same response once the slot values are masked: the mapping is learnable.
    masked: dict[str, set[str]] = {}
    for row in data.support_dataset(n=260, seed=0):
        text = re.sub(r"#\d{5}|\S+@example\.com|^Hi \w+!|^Hello!", "<slot>", row["response"])
        for city in data.CITIES:
            text = text.replace(city, "<city>")
        for method in data.PAYMENT_METHODS:
            text = text.replace(method, "<method>")
        masked.setdefault(row["intent"], set()).add(text)
    assert all(len(v) == 1 for v in masked.values()), masked


def test_formatting_function_is_conversational_prompt_completion():
    row = data.support_dataset(n=1)[0]
    out = data.formatting_function(row)
    assert out == {
        "prompt": [
            {"role": "system", "content": data.SYSTEM_PROMPT},
            {"role": "user", "content": row["instruction"]},
        ],
        "completion": [{"role": "assistant", "content": row["response"]}],
    }


def test_preference_dataset_formats():
    ds = data.preference_dataset(n=20, seed=0)
    assert ds.column_names == ["prompt", "chosen", "rejected"]
    assert all(isinstance(r[k], str) for r in ds for k in ("prompt", "chosen", "rejected"))
    assert all(r["chosen"] != r["rejected"] for r in ds)
    rude = sum(r["rejected"] in data._RUDE_RESPONSES for r in ds)
    assert rude == 10  # alternates wrong-intent / rude
    conv = data.preference_dataset(n=4, seed=0, conversational=True)
    assert conv[0]["prompt"][0]["role"] == "user"
    assert conv[0]["chosen"][0]["role"] == "assistant"
    assert conv[0]["chosen"][0]["content"] == ds[0]["chosen"]


def test_math_prompts_answers_are_correct():
    ds = data.math_prompt_dataset(n=100, seed=0)
    assert ds.column_names == ["prompt", "answer"]
    for row in ds:
        a, op, b = re.search(r"(\d)([+\-*])(\d)", row["prompt"]).groups()
        assert int(row["answer"]) == eval(f"{a}{op}{b}")  # noqa: S307 - digits and one operator
    conv = data.math_prompt_dataset(n=3, seed=0, conversational=True)
    assert conv[0]["prompt"] == [{"role": "user", "content": ds[0]["prompt"]}]


def test_pretrain_corpus_never_pairs_a_request_with_its_reply():
    corpus = data.pretrain_corpus(400, seed=0)
    assert corpus == data.pretrain_corpus(400, seed=0)
    text = "\n".join(corpus)
    assert "<|assistant|>" not in text
    # No full support response appears verbatim (replies are shuffled sentence by sentence).
    for row in data.support_dataset(n=52, seed=0):
        assert row["response"] not in text
