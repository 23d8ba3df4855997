"""Input datasets: conversion, the user's `formatting_func`, and column checks per trainer.

`formatting_func(row) -> dict` (as in the seeds) maps a raw row to TRL's format. For SFT and
DPO the raw columns are dropped (TRL must see only its format); for GRPO they are kept,
because reward functions receive every dataset column as a keyword argument.
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


def as_dataset(data: Any, argument: str) -> Dataset | None:
    """Accept a datasets.Dataset, a list of dicts or a pandas DataFrame."""
    if data is None:
        return None
    if isinstance(data, Dataset):
        dataset = data
    elif isinstance(data, list):
        dataset = Dataset.from_list(data)
    elif hasattr(data, "to_dict") and hasattr(data, "columns"):
        dataset = Dataset.from_pandas(data, preserve_index=False)
    else:
        raise TypeError(
            f"{argument} must be a datasets.Dataset, a list of dicts or a pandas DataFrame, "
            f"got {type(data).__name__}"
        )
    if len(dataset) == 0:
        raise ValueError(f"{argument} is empty")
    return dataset


def check_columns(columns: set[str], trainer_type: str, argument: str, func: Callable | None) -> None:
    if any(required <= columns for required in REQUIRED_COLUMNS[trainer_type]):
        return
    options = " or ".join(str(sorted(c)) for c in REQUIRED_COLUMNS[trainer_type])
    source = f"the output of formatting_func {getattr(func, '__name__', func)!r}" if func else argument
    raise ValueError(
        f"{trainer_type} training needs columns {options}; {source} has {sorted(columns)}. "
        "Pass a formatting_func in RFModelConfig that returns them."
    )


class FormattedDatasets:
    """Applies each distinct formatting function once per dataset and caches the result."""

    def __init__(self, trainer_type: str) -> None:
        self.trainer_type = trainer_type
        self._cache: dict[tuple[int, int], Dataset] = {}

    def check(self, dataset: Dataset, func: Callable | None, argument: str) -> set[str]:
        """Validate on the first row, before anything is trained; returns the trainer's columns."""
        if func is None:
            columns = set(dataset.column_names)
        else:
            try:
                out = func(dataset[0])
            except Exception as exc:
                raise ValueError(
                    f"formatting_func {getattr(func, '__name__', func)!r} failed on row 0 of {argument}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            if not isinstance(out, dict):
                raise TypeError(
                    f"formatting_func {getattr(func, '__name__', func)!r} must return a dict, "
                    f"got {type(out).__name__}"
                )
            columns = set(out) | (set(dataset.column_names) if self.trainer_type == "GRPO" else set())
        check_columns(columns, self.trainer_type, argument, func)
        return columns

    def get(self, dataset: Dataset | None, func: Callable | None) -> Dataset | None:
        if dataset is None or func is None:
            return dataset
        key = (id(dataset), id(func))
        if key not in self._cache:
            drop = [] if self.trainer_type == "GRPO" else dataset.column_names
            self._cache[key] = dataset.map(
                func,
                remove_columns=drop,
                load_from_cache_file=False,
                keep_in_memory=True,
                new_fingerprint=f"rapidfire-{id(dataset)}-{id(func)}",
            )
        return self._cache[key]
