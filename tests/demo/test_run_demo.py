"""`rapidfire demo` end to end through the engine: 4 runs, leaderboard, MLflow hint."""

from __future__ import annotations

import math

from rapidfire_core import cli


def test_demo_command_runs_the_4_config_sweep(tmp_path, capsys):
    # A short version of the default demo (64 steps, 4 chunks): same configs, same data.
    code = cli.main(["demo", "--experiment-path", str(tmp_path), "--num-chunks", "2", "--max-steps", "8"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Leaderboard" in out and "mlflow ui --backend-store-uri sqlite:///" in out
    # the demo's LoRA runs share the base model: execution="auto" fuses them on CUDA only
    import torch

    picked = (
        "Runs [1, 2, 3, 4] train fused" if torch.cuda.is_available() else "execution='auto' time-slices SFT"
    )
    assert picked in out
    speedup = [line for line in out.splitlines() if line.startswith("Fused vs time-sliced")]
    assert len(speedup) == 1 and "x the speed" in speedup[0], out

    from rapidfire_core.demo.main import run_demo  # the same, as a function, quiet

    board = run_demo(
        experiment_path=str(tmp_path), num_chunks=2, max_steps=4, quiet=True, compare_sliced=False
    )
    assert capsys.readouterr().out == ""
    assert len(board) == 4
    assert set(board["status"]) == {"COMPLETED"}, board.to_string()
    assert sorted(zip(board["r"], board["lr"], strict=True)) == [(8, 1e-4), (8, 1e-3), (32, 1e-4), (32, 1e-3)]
    assert board["steps"].tolist() == [4] * 4
    assert all(math.isfinite(v) for v in board["eval_loss"]) and all(
        math.isfinite(v) for v in board["train_loss_final"]
    )
    assert board["eval_loss"].is_monotonic_increasing
    experiments = [p for p in tmp_path.iterdir() if p.name.startswith("demo-sft-")]
    assert len(experiments) == 2 and all((p / "mlflow.db").is_file() for p in experiments)
