"""The demo: the cookbook's 4-config SFT sweep, offline, on CPU, in a few minutes.

2 LoRA configs (r=8 on q,v; r=32 on q,k,v,o) x 2 learning rates (1e-3, 1e-4) on a
customer-support dataset, trained chunk by chunk by ``Experiment.run_fit``, exactly
as in the RapidFire AI SFT cookbook. By default everything is local: the tiny
pretrained Llama from ``demo_assets()`` and the generated Bitext-like dataset.
``model`` / ``dataset`` take a local path or a hub id instead.

    rapidfire demo                      # or: python -m rapidfire_core.demo.main
    rapidfire demo --model TinyLlama/TinyLlama-1.1B-Chat-v1.0 \
                   --dataset bitext/Bitext-customer-support-llm-chatbot-training-dataset
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import sys
import time
import warnings
from pathlib import Path

import pandas as pd

from rapidfire_core.demo import DEFAULT_MAX_STEPS, data

# Sizes as in the cookbook (128 train rows, 24 eval rows, batch 4, log every 2 steps).
# Steps and eval cadence are cut so the 4 runs finish in well under 3 minutes on a
# 2-core CPU with the tiny model.
TRAIN_ROWS = 128
EVAL_ROWS = 24
MAX_LENGTH = 256


# --------------------------------------------------------------------------- datasets


def load_support_data(dataset: str | None = None, seed: int = 42):
    """(train, eval) datasets with ``instruction`` / ``response`` columns.

    ``None``: the generated support dataset (train seed 0, eval seed 1: same intents,
    fresh phrasings and slot values). Otherwise a saved dataset dir
    (``save_to_disk``), a data file (json/jsonl/csv/parquet), a dataset dir or script
    for ``load_dataset``, or a hub id. The rows are shuffled before the first
    ``TRAIN_ROWS`` go to train and the next ``EVAL_ROWS`` to eval (a hub dataset
    such as Bitext is sorted by intent).
    """
    if dataset is None:
        train = data.support_dataset(TRAIN_ROWS, seed=0)
        evals = data.support_dataset(EVAL_ROWS, seed=1)
        return train.shuffle(seed=seed), evals.shuffle(seed=seed)

    full = _load_any(dataset)
    missing = {"instruction", "response"} - set(full.column_names)
    if missing:
        raise ValueError(
            f"dataset {dataset!r} needs columns 'instruction' and 'response' (like Bitext); "
            f"missing {sorted(missing)}, found {full.column_names}"
        )
    if len(full) < 2:
        raise ValueError(f"dataset {dataset!r} has {len(full)} rows; the demo needs at least 2")
    full = full.shuffle(seed=seed)
    n_train = min(TRAIN_ROWS, len(full) - 1)
    n_eval = min(EVAL_ROWS, len(full) - n_train)
    return full.select(range(n_train)), full.select(range(n_train, n_train + n_eval))


def _load_any(dataset: str):
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    path = Path(dataset).expanduser()
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        loaded = load_from_disk(str(path))
    elif path.is_file():
        suffix = path.suffix.lower().lstrip(".")
        builder = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet", "txt": "text"}.get(
            suffix
        )
        if builder is None:
            raise ValueError(f"dataset file {dataset!r}: unsupported extension {path.suffix!r}")
        loaded = load_dataset(builder, data_files=str(path))
    else:  # a dataset dir / script, or a hub id
        loaded = load_dataset(str(path) if path.exists() else dataset)
    if isinstance(loaded, DatasetDict):
        split = "train" if "train" in loaded else next(iter(loaded))
        loaded = loaded[split]
    if not isinstance(loaded, Dataset):
        raise ValueError(
            f"dataset {dataset!r} did not load as a datasets.Dataset (got {type(loaded).__name__})"
        )
    return loaded


# --------------------------------------------------------------------------- configs


def sweep_configs(model_name: str, max_steps: int = DEFAULT_MAX_STEPS):
    """The cookbook's 2 x 2 grid: LoRA (r=8 q,v | r=32 q,k,v,o) x learning rate (1e-3 | 1e-4)."""
    from rapidfire_core.automl import List, RFLoraConfig, RFModelConfig, RFSFTConfig

    peft_configs_lite = List(
        [
            RFLoraConfig(
                r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj"], bias="none"
            ),
            RFLoraConfig(
                r=32,
                lora_alpha=64,
                lora_dropout=0.1,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                bias="none",
            ),
        ]
    )
    eval_steps = max(1, max_steps // 8)  # 8 eval points per run

    def model_config(learning_rate: float):
        return RFModelConfig(
            model_name=model_name,
            peft_config=peft_configs_lite,  # expands to 2 configs
            training_args=RFSFTConfig(
                learning_rate=learning_rate,
                lr_scheduler_type="linear",
                per_device_train_batch_size=4,
                per_device_eval_batch_size=8,
                max_steps=max_steps,
                gradient_accumulation_steps=1,
                logging_steps=2,
                eval_strategy="steps",
                eval_steps=eval_steps,
                max_length=MAX_LENGTH,
            ),
            model_type="causal_lm",
            model_kwargs={"dtype": "auto", "use_cache": False},
            formatting_func=data.formatting_function,
        )

    return List([model_config(1e-3), model_config(1e-4)])


# --------------------------------------------------------------------------- leaderboard


def _find_column(columns, *suffixes: str) -> str | None:
    for suffix in suffixes:
        for col in columns:
            if col == suffix or col.endswith("." + suffix):
                return col
    return None


SMOOTH_LOGS = 4  # train losses are per-2-step means of batch-4 losses: noisy, so average a few logs


def _logged(results: pd.DataFrame, run_id, metric: str) -> pd.Series:
    if results.empty or metric not in results.columns:
        return pd.Series(dtype=float)
    rows = results[results["run_id"] == run_id].sort_values("step")
    return rows[metric].dropna().astype(float)


def _mean(values: pd.Series) -> float:
    return float(values.mean()) if len(values) else math.nan


def leaderboard(runs_info: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """One row per run, best first (by final eval loss, then final train loss; failed runs last).

    Columns: ``run``, ``status``, ``r``, ``lr``, ``targets`` (the knobs),
    ``steps`` (last step logged), ``train_loss_first`` / ``train_loss_final`` (mean of the
    first / last ``SMOOTH_LOGS`` logged ``loss`` values), ``eval_loss`` and ``eval_acc``
    (last logged ``eval_loss`` / ``eval_mean_token_accuracy``), ``error``.
    """
    r_col = _find_column(runs_info.columns, "r")
    lr_col = _find_column(runs_info.columns, "learning_rate")
    tm_col = _find_column(runs_info.columns, "target_modules")
    rows = []
    for _, info in runs_info.iterrows():
        run_id = info["run_id"]
        loss = _logged(results, run_id, "loss")
        eval_loss = _logged(results, run_id, "eval_loss")
        eval_acc = _logged(results, run_id, "eval_mean_token_accuracy")
        steps = _logged(results, run_id, "step") if "step" in results.columns else pd.Series(dtype=float)
        rows.append(
            {
                "run": info.get("name") or f"run-{run_id}",
                "status": info.get("status"),
                "r": info[r_col] if r_col else None,
                "lr": info[lr_col] if lr_col else None,
                "targets": _short_targets(info[tm_col]) if tm_col else None,
                "steps": int(steps.max()) if len(steps) else None,
                "train_loss_first": _mean(loss.iloc[:SMOOTH_LOGS]),
                "train_loss_final": _mean(loss.iloc[-SMOOTH_LOGS:]),
                "eval_loss": float(eval_loss.iloc[-1]) if len(eval_loss) else math.nan,
                "eval_acc": float(eval_acc.iloc[-1]) if len(eval_acc) else math.nan,
                "error": info.get("error"),
            }
        )
    board = pd.DataFrame(rows)
    if board.empty:
        return board
    board["_failed"] = board["status"].astype(str).str.upper().eq("FAILED")
    board = board.sort_values(["_failed", "eval_loss", "train_loss_final"], na_position="last", kind="stable")
    return board.drop(columns="_failed").reset_index(drop=True)


def _short_targets(value) -> str | None:
    """``['q_proj', 'v_proj']`` (or its str) -> ``'q,v'``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        names = [v.strip(" '\"") for v in value.strip("[]()").split(",") if v.strip()]
    else:
        try:
            names = [str(v) for v in value]
        except TypeError:
            return str(value)
    return ",".join(n.removesuffix("_proj") for n in names)


def format_leaderboard(board: pd.DataFrame) -> str:
    if board.empty:
        return "(no runs)"
    shown = board.drop(columns=["error"] if board["error"].isna().all() else [])

    def num(fmt):
        return lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    return shown.to_string(
        index=False,
        formatters={
            "lr": num(".0e"),
            "train_loss_first": num(".3f"),
            "train_loss_final": num(".3f"),
            "eval_loss": num(".3f"),
            "eval_acc": num(".3f"),
        },
    )


# --------------------------------------------------------------------------- run_demo


def run_demo(
    model: str | None = None,
    dataset: str | None = None,
    experiment_path: str | None = None,
    num_chunks: int = 4,
    max_steps: int = DEFAULT_MAX_STEPS,
    quiet: bool = False,
    compare_sliced: bool = True,
) -> pd.DataFrame:
    """Run the cookbook's 4-config SFT sweep and return its leaderboard (one row per run).

    model: a local model dir or hub id (default: the offline tiny chat Llama, built
      on first use into the cache, see ``demo_assets``).
    dataset: a local dataset path or hub id with instruction/response columns
      (default: the generated support dataset).
    experiment_path: root folder of experiments (default: Experiment's default).
    compare_sliced: after the sweep (trained fused: its LoRA runs share the base model), time
      the same configs for a few steps fused and time-sliced, side by side, and print the ratio.
    """
    t0 = time.perf_counter()
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    _quiet_libraries()

    if model is None:
        from rapidfire_core.demo.tiny_model import demo_assets

        assets = demo_assets()
        model_name = str(assets.model_path)
        how = "built" if assets.built else "cached"
        say(
            f"Demo model: tiny Llama ({assets.info.get('num_parameters', '?')} params, {how}) at {model_name}"
        )
    else:
        model_name = model
        say(f"Model: {model_name}")

    train_dataset, eval_dataset = load_support_data(dataset)
    say(
        f"Dataset: {dataset or 'generated customer-support (offline)'}: "
        f"{len(train_dataset)} train / {len(eval_dataset)} eval rows"
    )

    from rapidfire_core import Experiment
    from rapidfire_core.automl import RFGridSearch
    from rapidfire_core.demo.tiny_model import create_model, single_thread

    config_set_lite = sweep_configs(model_name, max_steps=max_steps)
    experiment_name = f"demo-sft-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    exp_kwargs = {"experiment_name": experiment_name, "mode": "fit", "experiment_path": experiment_path}
    if "verbose" in inspect.signature(Experiment).parameters:
        exp_kwargs["verbose"] = not quiet
    experiment = Experiment(**exp_kwargs)

    # The tiny model's matmuls are too small for a second torch thread to pay off; on a
    # busy 2-core machine its spin-waits made the sweep ~3x slower (same losses).
    def threads():
        return single_thread() if model is None else contextlib.nullcontext()

    try:
        config_group = RFGridSearch(configs=config_set_lite, trainer_type="SFT")
        with threads(), warnings.catch_warnings():
            # transformers 5 / TRL deprecation notices (e.g. gradient_checkpointing renames) are
            # not the user's to act on here; they would only clutter the demo's output.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            experiment.run_fit(
                config_group, create_model, train_dataset, eval_dataset, num_chunks=num_chunks, seed=42
            )
        results = experiment.get_results()
        runs_info = experiment.get_runs_info()
    finally:
        experiment.end()

    board = leaderboard(runs_info, results)
    say("")
    say(f"Leaderboard (sorted by final eval loss), {time.perf_counter() - t0:.0f}s total:")
    say(format_leaderboard(board))
    if compare_sliced:
        with threads(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            fused_s, sliced_s, steps = fused_vs_sliced_seconds(
                model_name, create_model, train_dataset, experiment_path
            )
        say(
            f"\nFused vs time-sliced, the same {len(board)} configs x {steps} steps (no eval), measured now: "
            f"{fused_s:.1f}s fused, {sliced_s:.1f}s time-sliced: fused is {sliced_s / fused_s:.2f}x the speed"
        )
    where = getattr(experiment, "path", None)
    uri = getattr(experiment, "tracking_uri", None)
    if where is not None:
        say(f"\nExperiment files: {where}")
    if uri is not None:
        say(f"MLflow store: {uri}\n  open it with: mlflow ui --backend-store-uri {uri}")
    return board


SPEEDUP_STEPS = 8  # optimizer steps per config in the fused-vs-sliced comparison


def fused_vs_sliced_seconds(model_name, create_model, train_dataset, experiment_path):
    """(fused seconds, time-sliced seconds, steps): the demo's configs trained both ways for
    SPEEDUP_STEPS steps, without an eval set, in the order sliced, fused, sliced, fused; the
    faster time of each way is taken (a busy machine's noise falls on both ways)."""
    from rapidfire_core import Experiment
    from rapidfire_core.automl import RFGridSearch

    seconds: dict[str, list[float]] = {"fused": [], "sliced": []}
    for execution in ("sliced", "fused", "sliced", "fused"):
        exp = Experiment(
            f"demo-speedup-{execution}-{time.monotonic_ns()}", experiment_path=experiment_path, verbose=False
        )
        try:
            group = RFGridSearch(sweep_configs(model_name, max_steps=SPEEDUP_STEPS), trainer_type="SFT")
            start = time.perf_counter()
            exp.run_fit(group, create_model, train_dataset, num_chunks=1, seed=42, execution=execution)
            seconds[execution].append(time.perf_counter() - start)
        finally:
            exp.end()
    return min(seconds["fused"]), min(seconds["sliced"]), SPEEDUP_STEPS


def _quiet_libraries() -> None:
    """Silence per-example progress bars and library chatter that would drown the demo's output."""
    try:
        import datasets

        datasets.disable_progress_bars()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001
        pass


if __name__ == "__main__":  # python -m rapidfire_core.demo.main
    from rapidfire_core.cli import main

    raise SystemExit(main(["demo", *sys.argv[1:]]))
