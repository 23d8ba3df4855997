"""Embedding the low-level layers costs no experiment stack: importing them never loads trackers,
TRL, the search library or the dashboard's web stack (each module in a fresh interpreter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Top-level packages the low-level API must not pull in: the experiment tracker backends, TRL, the
# automatic search, the dashboard's web stack. torch (and triton, which ops/ uses for kernels) are fine.
HEAVY = ("mlflow", "trl", "optuna", "starlette", "uvicorn", "wandb", "trackio", "tensorboard")


def _loaded_heavy_packages(statement: str) -> list[str]:
    code = (
        f"import json, sys\n{statement}\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r}))))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "statement",
    [
        "import rapidfire_core.lora",
        "import rapidfire_core.ops",
        "import rapidfire_core.memory",
        "from rapidfire_core.lora import *\nfrom rapidfire_core.ops import *\nfrom rapidfire_core.memory import *",
        # choosing the trackers loads none of them: each backend is imported when it is built
        "import rapidfire_core.tracking.selection",
    ],
)
def test_low_level_api_imports_no_experiment_stack(statement: str) -> None:
    assert _loaded_heavy_packages(statement) == []


def test_package_import_is_lazy() -> None:
    """`import rapidfire_core` (e.g. for __version__ or the build facts) loads neither torch nor the rest."""
    statement = "import rapidfire_core, rapidfire_core._native, rapidfire_core.build_report"
    code = f"import sys\n{statement}\nprint('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.strip() == "False"
    assert _loaded_heavy_packages(statement) == []
