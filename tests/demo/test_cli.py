"""The `rapidfire` command, the demo's dataset loading and its leaderboard."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from rapidfire_core import cli
from rapidfire_core.demo import DEFAULT_MAX_STEPS, data
from rapidfire_core.demo.main import TRAIN_ROWS, format_leaderboard, leaderboard, load_support_data


def test_top_level_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "demo" in out and "info" in out


def test_demo_help_lists_options(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--dataset", "--experiment-path", "--num-chunks", "--max-steps"):
        assert flag in out
    assert f"default: {DEFAULT_MAX_STEPS}" in out


def test_demo_arguments_parse_and_validate(capsys):
    args = cli.build_parser().parse_args(
        [
            "demo",
            "--model",
            "m",
            "--dataset",
            "d.jsonl",
            "--experiment-path",
            "/x",
            "--num-chunks",
            "2",
            "--max-steps",
            "8",
        ]  # fmt: skip
    )
    assert (args.model, args.dataset, args.experiment_path, args.num_chunks, args.max_steps) == (
        "m",
        "d.jsonl",
        "/x",
        2,
        8,
    )
    defaults = cli.build_parser().parse_args(["demo"])
    assert (defaults.model, defaults.dataset, defaults.num_chunks, defaults.max_steps) == (
        None,
        None,
        4,
        DEFAULT_MAX_STEPS,
    )
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["demo", "--num-chunks", "0"])
    assert "positive integer" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "usage: rapidfire" in capsys.readouterr().out


def test_info_prints_versions_and_gpu(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("rapidfire_core", "native module", "torch", "transformers", "trl", "GPU usable by torch"):
        assert name in out
    info = cli.collect_info()
    assert isinstance(info["native"], dict) and "native_loaded" in info["native"]
    assert isinstance(info["gpu_usable"], bool)


def test_info_tolerates_missing_native_module(monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_native(name, *args, **kwargs):
        if name == "rapidfire_core._native":
            raise ImportError("simulated: not built")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_native)
    assert cli.main(["info"]) == 0
    assert "simulated: not built" in capsys.readouterr().out


# ---------------------------------------------------------------- datasets


def test_default_data_is_generated_offline_and_deterministic():
    train, evals = load_support_data(None)
    assert (len(train), len(evals)) == (TRAIN_ROWS, 24)
    assert set(train.column_names) >= {"instruction", "response"}
    again, _ = load_support_data(None)
    assert train.to_list() == again.to_list()
    assert len(set(evals["instruction"]) - set(train["instruction"])) >= 20  # eval rows are fresh


@pytest.mark.parametrize("kind", ["jsonl", "csv", "disk"])
def test_local_dataset_files_load(tmp_path, kind):
    ds = data.support_dataset(n=40, seed=4)
    if kind == "jsonl":
        path = tmp_path / "d.jsonl"
        ds.to_json(str(path))
    elif kind == "csv":
        path = tmp_path / "d.csv"
        ds.to_csv(str(path))
    else:
        path = tmp_path / "saved"
        ds.save_to_disk(str(path))
    train, evals = load_support_data(str(path))
    assert len(train) == 39 and len(evals) == 1  # small data: all but one row train
    assert sorted(list(train["instruction"]) + list(evals["instruction"])) == sorted(ds["instruction"])


def test_dataset_without_instruction_response_is_a_clear_error(tmp_path):
    path = tmp_path / "d.jsonl"
    data.math_prompt_dataset(n=4).to_json(str(path))
    with pytest.raises(ValueError, match="instruction.*response"):
        load_support_data(str(path))


# ---------------------------------------------------------------- leaderboard


def _frames():
    runs = pd.DataFrame(
        [
            {"run_id": 1, "name": "run-1", "status": "COMPLETED", "error": None, "peft.r": 8,
             "peft.target_modules": "['q_proj', 'v_proj']", "train.learning_rate": 1e-3},
            {"run_id": 2, "name": "run-2", "status": "COMPLETED", "error": None, "peft.r": 32,
             "peft.target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "train.learning_rate": 1e-3},
            {"run_id": 3, "name": "run-3", "status": "FAILED", "error": "RuntimeError: boom", "peft.r": 8,
             "peft.target_modules": "['q_proj', 'v_proj']", "train.learning_rate": 1e-4},
        ]
    )  # fmt: skip
    rows = []
    for run_id, losses, evals in [(1, [2.0, 1.8, 1.6, 1.5, 1.4, 1.3], [1.7, 1.5]), (2, [2.0, 1.5, 1.2, 1.0, 0.9, 0.8],
                                                                                    [1.2, 0.9])]:  # fmt: skip
        for i, loss in enumerate(losses):
            step = 2 * (i + 1)
            rows.append({"run_id": run_id, "step": step, "loss": loss, "eval_loss": math.nan})
            if step % 6 == 0:
                rows.append(
                    {"run_id": run_id, "step": step, "loss": math.nan, "eval_loss": evals[step // 6 - 1]}
                )
    rows.append({"run_id": 3, "step": 2, "loss": 2.0, "eval_loss": math.nan})
    return runs, pd.DataFrame(rows)


def test_leaderboard_sorts_by_eval_loss_failed_last():
    board = leaderboard(*_frames())
    assert board["run"].tolist() == ["run-2", "run-1", "run-3"]
    best = board.iloc[0]
    assert (best["r"], best["lr"], best["targets"], best["steps"]) == (32, 1e-3, "q,k,v,o", 12)
    assert best["eval_loss"] == pytest.approx(0.9)
    assert best["train_loss_first"] == pytest.approx((2.0 + 1.5 + 1.2 + 1.0) / 4)
    assert best["train_loss_final"] == pytest.approx((1.2 + 1.0 + 0.9 + 0.8) / 4)
    assert board.iloc[1]["targets"] == "q,v"
    assert board.iloc[2]["status"] == "FAILED" and math.isnan(board.iloc[2]["eval_loss"])
    text = format_leaderboard(board)
    assert "1e-03" in text and "RuntimeError: boom" in text and "0.900" in text


def test_leaderboard_empty():
    runs, results = _frames()
    assert leaderboard(runs.iloc[0:0], results).empty
    assert format_leaderboard(leaderboard(runs.iloc[0:0], results)) == "(no runs)"
