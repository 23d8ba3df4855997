"""Input datasets: conversion, the user's `formatting_func`, and checks of every row per trainer.

`formatting_func(row) -> dict` (as in the seeds) maps a raw row to TRL's format. For SFT and
DPO the raw columns are dropped (TRL must see only its format); for GRPO they are kept,
because reward functions receive every dataset column as a keyword argument.

`FormattedDatasets.check` runs before any model is loaded: it applies the formatting function
to every row (once per distinct function; the runs reuse the result) and checks every row's
values the way TRL will read them, so a bad row is an error that names the function, the
dataset and the row instead of a failure of every run later:

    SFT   "prompt" + "completion" | "messages" | "text"      (the first present, as TRL reads them)
    DPO   "chosen" + "rejected" (+ "prompt")
    GRPO  "prompt"

Each of those values is a string or a non-empty list of chat messages (dicts with a "role"
whose "content", when given, is a string, a list of content parts or None: bytes or a number
would reach the chat template as their repr);
the values of one row are all strings or all message lists (TRL joins prompt + completion),
and every row is of the kind of the first row (TRL decides the kind once, from the first row).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from datasets import Dataset

# Any one of these column sets makes a dataset usable by the trainer type.
REQUIRED_COLUMNS: dict[str, list[set[str]]] = {
    "SFT": [{"text"}, {"messages"}, {"prompt", "completion"}],
    "DPO": [{"prompt", "chosen", "rejected"}, {"chosen", "rejected"}],
    "GRPO": [{"prompt"}],
}
_CHAT_HINT = "a string or a non-empty list of chat messages ({'role': ..., 'content': ...})"


def as_dataset(data: Any, argument: str) -> Dataset | None:
    """Accept a datasets.Dataset, a list of dicts or a pandas DataFrame."""
    if data is None:
        return None
    if isinstance(data, Dataset):
        dataset = data
    elif isinstance(data, list) or (hasattr(data, "to_dict") and hasattr(data, "columns")):
        try:
            dataset = (
                Dataset.from_list(data)
                if isinstance(data, list)
                else Dataset.from_pandas(data, preserve_index=False)
            )
        except Exception as exc:  # pyarrow's errors: a column whose values are of different types
            raise ValueError(
                f"{argument}: these rows cannot be one dataset ({type(exc).__name__}: {exc})"
            ) from exc
    else:
        raise TypeError(
            f"{argument} must be a datasets.Dataset, a list of dicts or a pandas DataFrame, "
            f"got {type(data).__name__}"
        )
    if len(dataset) == 0:
        raise ValueError(f"{argument} is empty")
    return dataset


def _func_name(func: Callable) -> str:
    return repr(getattr(func, "__name__", func))


def check_columns(columns: set[str], trainer_type: str, argument: str, func: Callable | None) -> None:
    if any(required <= columns for required in REQUIRED_COLUMNS[trainer_type]):
        return
    options = " or ".join(str(sorted(c)) for c in REQUIRED_COLUMNS[trainer_type])
    source = f"the output of formatting_func {_func_name(func)}" if func else argument
    raise ValueError(
        f"{trainer_type} training needs columns {options}; {source} has {sorted(columns)}. "
        "Pass a formatting_func in RFModelConfig that returns them."
    )


def format_columns(trainer_type: str, columns: set[str]) -> tuple[str, ...]:
    """The columns TRL reads a row's training text from (module docstring)."""
    if trainer_type == "SFT":
        if "prompt" in columns:
            return ("prompt", "completion")
        return ("messages",) if "messages" in columns else ("text",)
    if trainer_type == "DPO":
        return tuple(c for c in ("prompt", "chosen", "rejected") if c in columns)
    return ("prompt",)


def _kind(value: Any) -> str | None:
    """ "text", "chat", or None for a value TRL cannot read."""
    if isinstance(value, str):
        return "text"
    if (
        isinstance(value, list)
        and value
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in value)
    ):
        return "chat"
    return None


def _bad_content(messages: list[dict[str, Any]]) -> str | None:
    """'message i: ...' for the first message whose content a chat template cannot render."""
    for i, message in enumerate(messages):
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            return (
                f"message {i}: 'content' must be a string (or a list of content parts), got {_show(content)}"
            )
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 80 else text[:77] + '...'}"


class RowChecker:
    """Checks the rows of one dataset, in order (module docstring); the first row fixes the kind."""

    def __init__(self, trainer_type: str, where: str) -> None:
        self.trainer_type = trainer_type
        self.where = where  # "train_dataset" or "formatting_func 'f' on train_dataset"
        self.kind: str | None = None
        self.first_row: int | None = None

    def check(self, row: dict[str, Any], index: int) -> None:
        columns = format_columns(self.trainer_type, set(row))
        kinds = {}
        for column in columns:
            if column not in row:
                continue  # a missing column is check_columns' error (named with the columns found)
            kind = _kind(row[column])
            if kind is None:
                raise ValueError(
                    f"{self.where}, row {index}: {column!r} must be {_CHAT_HINT}, got {_show(row[column])}"
                )
            bad = _bad_content(row[column]) if kind == "chat" else None
            if bad is not None:
                raise ValueError(f"{self.where}, row {index}: {column!r} {bad}")
            if self.trainer_type == "SFT" and column == "messages" and kind != "chat":
                raise ValueError(
                    f"{self.where}, row {index}: 'messages' must be a list of chat messages, "
                    f"got {_show(row[column])}"
                )
            kinds[column] = kind
        if len(set(kinds.values())) > 1:
            shown = ", ".join(
                f"{c!r} is {'a string' if k == 'text' else 'a message list'}" for c, k in kinds.items()
            )
            raise ValueError(
                f"{self.where}, row {index}: {shown}; TRL joins them, so they must all be strings or all "
                "message lists"
            )
        if not kinds:
            return
        kind = next(iter(kinds.values()))
        if self.kind is None:
            self.kind, self.first_row = kind, index
        elif kind != self.kind:
            what = {"text": "strings", "chat": "chat messages"}
            raise ValueError(
                f"{self.where}, row {index}: {sorted(kinds)} hold {what[kind]} but row {self.first_row} "
                f"holds {what[self.kind]}; TRL reads every row as the first row's kind"
            )


class FormattedDatasets:
    """Applies each distinct formatting function once per dataset, checks the rows, caches the result."""

    def __init__(self, trainer_type: str) -> None:
        self.trainer_type = trainer_type
        self._cache: dict[tuple[int, int], Dataset] = {}
        self._checked: dict[tuple[int, int], set[str]] = {}

    def check(self, dataset: Dataset, func: Callable | None, argument: str) -> set[str]:
        """Format and check every row (module docstring), before anything is trained; returns the
        columns the trainer gets."""
        key = (id(dataset), id(func))
        if key not in self._checked:
            formatted = self._format(dataset, func, argument)
            columns = set(formatted.column_names)
            check_columns(columns, self.trainer_type, argument, func)
            if func is None:  # a formatting function's rows were checked as they were made
                checker = RowChecker(self.trainer_type, argument)
                for index, row in enumerate(formatted.select_columns(self._read(columns))):
                    checker.check(row, index)
            self._checked[key] = columns
        return self._checked[key]

    def get(self, dataset: Dataset | None, func: Callable | None) -> Dataset | None:
        if dataset is None or func is None:
            return dataset
        return self._format(dataset, func, "the dataset")

    def _read(self, columns: set[str]) -> list[str]:
        return [c for c in format_columns(self.trainer_type, columns) if c in columns]

    def _format(self, dataset: Dataset, func: Callable | None, argument: str) -> Dataset:
        if func is None:
            return dataset
        key = (id(dataset), id(func))
        if key not in self._cache:
            checker = RowChecker(self.trainer_type, f"formatting_func {_func_name(func)} on {argument}")

            def apply(row: dict[str, Any], index: int) -> dict[str, Any]:
                try:
                    out = func(row)
                except Exception as exc:
                    raise ValueError(
                        f"formatting_func {_func_name(func)} failed on row {index} of {argument}: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                if not isinstance(out, dict):
                    raise TypeError(
                        f"formatting_func {_func_name(func)} must return a dict, got {type(out).__name__} "
                        f"on row {index} of {argument}"
                    )
                # GRPO keeps the raw columns (reward functions read them); TRL reads the merged row.
                checker.check({**row, **out} if self.trainer_type == "GRPO" else out, index)
                return out

            drop = [] if self.trainer_type == "GRPO" else dataset.column_names
            self._cache[key] = dataset.map(
                apply,
                with_indices=True,
                remove_columns=drop,
                load_from_cache_file=False,
                keep_in_memory=True,
                new_fingerprint=f"rapidfire-{id(dataset)}-{id(func)}",
            )
        return self._cache[key]
