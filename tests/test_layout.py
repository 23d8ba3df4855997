"""One module says where experiments live: the Experiment, `rapidfire runs` and the dashboard
find the same folder however the root is given (an empty RF_EXPERIMENT_PATH is unset)."""

from __future__ import annotations

from pathlib import Path

from rapidfire_core import Experiment, layout
from rapidfire_core.dashboard.experiments import default_root, list_experiments, resolve_experiment


def test_the_root_is_the_argument_else_the_variable_else_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv(layout.ROOT_ENV, str(tmp_path / "from-env"))
    assert layout.experiments_root(tmp_path / "given") == tmp_path / "given"
    assert layout.experiments_root() == tmp_path / "from-env"
    assert layout.experiments_root("") == tmp_path / "from-env"  # an empty argument is not a root
    monkeypatch.setenv(layout.ROOT_ENV, "")
    assert layout.experiments_root() == Path("rapidfire_experiments")
    monkeypatch.delenv(layout.ROOT_ENV)
    assert layout.experiments_root() == Path("rapidfire_experiments")


def test_a_runs_files_are_under_its_folder():
    exp = Path("/x/exp")
    assert layout.runs_db(exp) == exp / "runs.db"
    assert layout.run_adapter_dir(exp, 3) == exp / "runs" / "3" / "adapter"
    assert layout.run_checkpoints_dir(exp, 3) == exp / "runs" / "3" / "checkpoints"
    assert layout.logs_dir(exp) == exp / "logs"


def test_an_empty_root_variable_puts_the_experiment_where_the_cli_and_dashboard_look(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(layout.ROOT_ENV, "")
    exp = Experiment("sweep", verbose=False)
    assert exp.path == (tmp_path / "rapidfire_experiments" / "sweep").resolve()
    assert not (tmp_path / "sweep").exists()
    assert [e["name"] for e in list_experiments(default_root())] == ["sweep"]
    assert resolve_experiment("sweep", default_root()).resolve() == exp.path
    exp.end()


def test_the_layout_loads_without_torch_for_the_cli_and_the_dashboard():
    import subprocess
    import sys

    probe = "import sys, rapidfire_core.dashboard.experiments; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip()
        == "False"
    )
