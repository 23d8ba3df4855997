"""Notebooks in the style of RapidFire AI's fit tutorials, executed for real with nbclient.

Each notebook in tests/fit/notebooks/ is ours, written the way a RapidFire AI tutorial is
(SFT chat-QA, DPO alignment, GRPO math reasoning, Optuna SFT, Colab with TensorBoard): its
imports renamed to ``rapidfire_core``, and only the model (a tiny local Llama, through
RF_TUTORIAL_MODEL), the data (`rapidfire_core.demo.data` instead of `load_dataset`), the sizes
and the metric function (computed locally: `evaluate.load` downloads its script) differ. One
kernel per notebook; each must run top to bottom and leave the metrics the tutorial reads.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the test extra installs nbformat/nbclient/ipykernel")
nbclient = pytest.importorskip("nbclient", reason="the test extra installs nbclient")

from rapidfire_core.control import RunStore  # noqa: E402
from rapidfire_core.fit.db.rf_db import RfDb  # noqa: E402

NOTEBOOKS = Path(__file__).parent / "notebooks"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _execute(name: str, workdir: Path, model_dir: str, monkeypatch) -> tuple[dict, Path]:
    """Run notebook `name` in a fresh kernel (cwd `workdir`); the executed notebook and the root."""
    root = workdir / "rapidfire_experiments"
    for key, value in {
        "RF_TUTORIAL_MODEL": model_dir,
        "RF_EXPERIMENT_PATH": str(root),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TMPDIR": str(workdir),  # TensorBoard's notebook launcher records its servers here
        "MPLBACKEND": "agg",
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("RF_MLFLOW_ENABLED", "RF_TENSORBOARD_ENABLED", "RF_TRACKIO_ENABLED", "RF_TRACKING_BACKEND"):
        monkeypatch.delenv(key, raising=False)
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    try:
        client.execute()
    finally:
        _stop_tensorboards(workdir)
    return notebook, root


def _stop_tensorboards(workdir: Path) -> None:
    """End the TensorBoard servers the notebook's %tensorboard started (by their recorded pid)."""
    for info in (workdir / ".tensorboard-info").glob("pid-*.info"):
        try:
            os.kill(int(json.loads(info.read_text())["pid"]), signal.SIGTERM)
        except (ProcessLookupError, ValueError, KeyError):
            pass


def _outputs(notebook) -> str:
    texts = []
    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            texts.append(out.get("text", ""))
            texts.append(str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(texts)


def _runs_and_results(root: Path, name: str):
    store = RunStore(root / name / "runs.db")
    try:
        return store.runs(), store.results_frame()
    finally:
        store.close()


def test_sft_chatqa_notebook(tmp_path, tiny_model_dir, monkeypatch):
    notebook, root = _execute("sft_chatqa", tmp_path, tiny_model_dir, monkeypatch)
    runs, results = _runs_and_results(root, "exp1-chatqa-lite")
    assert [r["status"] for r in runs] == ["COMPLETED"] * 4, [r["error"] for r in runs]
    # generation metrics under the names sample_compute_metrics returns, for every run
    per_run = results.groupby("run_id")
    assert (per_run["rougeL"].count() >= 2).all() and (per_run["bleu"].count() >= 2).all()
    assert (per_run["eval_loss"].count() >= 2).all()
    (cell,) = [cell for cell in notebook.cells if "controller.display()" in cell.source]
    shown = [out for out in cell.outputs if WIDGET_VIEW in out.get("data", {})]
    assert len(shown) == 1 and "exp1-chatqa-lite" in shown[0]["data"]["text/plain"]  # the panel


def test_dpo_alignment_notebook_the_invalid_config_fails_alone(tmp_path, tiny_model_dir, monkeypatch):
    notebook, root = _execute("dpo_alignment", tmp_path, tiny_model_dir, monkeypatch)
    runs, results = _runs_and_results(root, "exp1-sft-dpo-lite")
    assert [r["status"] for r in runs] == ["COMPLETED", "FAILED", "COMPLETED"]
    assert "label_smoothing=0.5 with loss_type='robust' must lie in [0.0, 0.5)" in runs[1]["error"]
    trained = results[results.run_id != 2]
    for metric in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"):
        assert trained.groupby("run_id")[metric].count().min() > 0
    assert "run 2 FAILED: ConfigError" in _outputs(notebook)  # shown before training


def test_grpo_math_notebook(tmp_path, tiny_model_dir, monkeypatch):
    _, root = _execute("grpo_math", tmp_path, tiny_model_dir, monkeypatch)
    runs, results = _runs_and_results(root, "exp1-math-reasoning-lite")
    assert [r["status"] for r in runs] == ["COMPLETED"] * 2, [r["error"] for r in runs]
    for metric in ("reward", "rewards/correctness_reward_func/mean", "rewards/int_reward_func/mean"):
        assert results.groupby("run_id")[metric].count().min() == 2


def test_optuna_sft_notebook_objective_rougeL_and_the_study(tmp_path, tiny_model_dir, monkeypatch):
    import optuna

    notebook, root = _execute("optuna_sft", tmp_path, tiny_model_dir, monkeypatch)
    runs, results = _runs_and_results(root, "exp-optuna-chatqa-tiny1")
    assert len(runs) == 3 and {r["status"] for r in runs} <= {"COMPLETED", "STOPPED"}  # the budget
    assert results["rougeL"].notna().any()
    output = _outputs(notebook)
    assert "Trials: 3 total" in output and "Best trial: #" in output
    study = optuna.load_study(
        study_name="exp-optuna-chatqa-tiny1",
        storage=f"sqlite:///{root / 'exp-optuna-chatqa-tiny1' / 'optuna.db'}",
    )
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete and all(0.0 <= t.value <= 1.0 for t in complete)  # rougeL values


def test_colab_tensorboard_notebook_text_rows_with_rougeL(tmp_path, tiny_model_dir, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    notebook, root = _execute("colab_tensorboard", tmp_path, tiny_model_dir, monkeypatch)
    name = "tensorboard-demo-1"
    assert RfDb(root).get_experiments_path(name) == root.resolve()
    runs, results = _runs_and_results(root, name)
    assert [r["status"] for r in runs] == ["COMPLETED"] * 4, [r["error"] for r in runs]
    assert results.groupby("run_id")["rougeL"].count().min() >= 1  # generated from the text rows
    assert not (root / name / "mlflow.db").exists()  # RF_TRACKING_BACKEND=tensorboard
    events = EventAccumulator(str(root / name / "tensorboard_logs" / "run-1")).Reload()
    assert "rougeL" in events.Tags()["scalars"] and "loss" in events.Tags()["scalars"]
    assert f"TensorBoard logs will be saved to: {root.resolve()}/{name}/tensorboard_logs" in _outputs(
        notebook
    )
