"""Row checks of rapidfire_core.trainers.datasets that need no model (test_bad_input runs them
through run_fit)."""

from __future__ import annotations

import pytest

from rapidfire_core.trainers.datasets import RowChecker


def _messages(content):
    return [{"role": "user", "content": "hi"}, {"role": "assistant", "content": content}]


@pytest.mark.parametrize("content", [b"hello", 42, {"text": "x"}])
def test_message_content_that_is_not_text_is_refused_with_the_row_named(content):
    checker = RowChecker("SFT", "train_dataset")
    checker.check({"messages": _messages("fine")}, 0)
    with pytest.raises(
        ValueError, match=r"train_dataset, row 1: 'messages' message 1: 'content' must be a string"
    ) as err:
        checker.check({"messages": _messages(content)}, 1)
    assert type(content).__name__ in str(err.value)


def test_text_content_parts_and_absent_content_are_accepted():
    checker = RowChecker("SFT", "train_dataset")
    checker.check({"messages": _messages([{"type": "text", "text": "hello"}])}, 0)
    checker.check({"messages": _messages(None)}, 1)  # an assistant turn that only calls a tool
    dpo = RowChecker("DPO", "train_dataset")
    with pytest.raises(ValueError, match=r"row 0: 'chosen' message 0: 'content'.*got bytes b'yes'"):
        dpo.check({"prompt": _messages("q"), "chosen": [{"role": "assistant", "content": b"yes"}],
                   "rejected": [{"role": "assistant", "content": "no"}]}, 0)  # fmt: skip
