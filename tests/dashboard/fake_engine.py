"""A stand-in for a training process, for dashboard and CLI tests that need no model.

`FakeEngine` writes what the real controller writes, through the same stores: a heartbeat,
metric rows of in-flight runs (smooth loss curves whose speed depends on the learning rate),
status changes, and the outcome of each pending command (stop / resume / delete / clone,
with a clone's learning rate checked the way the engine's config validation would).
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

from rapidfire_core.control import CommandStore, IllegalTransition, RunStatus, RunStore
from rapidfire_core.control.run_store import MetricRecord

KNOBS = {"model_name": "tiny-llama", "peft.r": 8, "peft.lora_alpha": 16, "train.learning_rate": 1e-3,
         "train.max_steps": 400, "train.per_device_train_batch_size": 4}  # fmt: skip
STEPS_PER_CHUNK = 8


def make_experiment(root: Path, name: str, grid: list[dict]) -> tuple[RunStore, CommandStore]:
    """An experiment dir `root/name` with one NEW run per knob override in `grid`."""
    runs = RunStore(root / name / "runs.db")
    commands = CommandStore(root / name / "runs.db")
    for i, overrides in enumerate(grid):
        runs.create_run(f"run-{i + 1}", "SFT", {**KNOBS, **overrides})
    return runs, commands


def loss_at(knobs: dict, step: float) -> float:
    """A plausible SFT loss curve: faster with a larger learning rate, lower with a larger rank."""
    lr = float(knobs.get("train.learning_rate", 1e-3))
    speed = 0.004 + 18.0 * lr
    floor = 0.55 + 0.9 / math.sqrt(float(knobs.get("peft.r", 8)))
    wiggle = 0.035 * math.sin(step * 0.9 + lr * 1e4) + 0.02 * math.sin(step * 2.3)
    return floor + (2.9 - floor) * math.exp(-speed * step) + wiggle


class FakeEngine:
    """Trains every NEW/ONGOING run one step per `interval` seconds and applies commands.

    alive=False: no heartbeat and no command applying (nobody is training the experiment);
    metrics still flow if `train` is True."""

    def __init__(self, exp_dir: Path, interval: float = 0.1, alive: bool = True, train: bool = True) -> None:
        self.runs = RunStore(exp_dir / "runs.db")
        self.commands = CommandStore(exp_dir / "runs.db")
        self.interval, self.alive, self.train = interval, alive, train
        self._offset: dict[int, int] = {}  # warm-started clones continue their parent's curve
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fake-engine", daemon=True)

    def __enter__(self) -> FakeEngine:
        self._started = time.time()
        if self.alive:
            self.commands.beat(self._started)  # live before the first command can be sent
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.alive:
            self.commands.clear_beat()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.alive:
                self.commands.beat(self._started)
                self.apply_commands()
            if self.train:
                self.step_all()
            self._stop.wait(self.interval)

    # ---- training ----------------------------------------------------------------------------
    def step_all(self, steps: int = 1) -> None:
        for _ in range(steps):
            records = []
            for run in self.runs.runs():
                if RunStatus(run["status"]) not in (RunStatus.NEW, RunStatus.ONGOING):
                    continue
                records.extend(self._step(run))
            self.runs.log_metric_records(records)

    def _step(self, run: dict) -> list[MetricRecord]:
        run_id, knobs = run["run_id"], run["knobs"]
        step = run["global_step"] + 1
        max_steps = knobs.get("train.max_steps", 400)
        lr = float(knobs.get("train.learning_rate", 1e-3))
        x = step + self._offset.get(run_id, 0)
        chunk = (step - 1) // STEPS_PER_CHUNK + 1
        metrics = {
            "loss": loss_at(knobs, x),
            "learning_rate": lr * max(0.0, 1 - step / max_steps),
            "grad_norm": 0.5
            + (lr * 1e3) ** 0.3 * (1.6 * math.exp(-x / 30) + 0.15 * abs(math.sin(x * 1.7 + lr))),
        }
        records = [MetricRecord(run_id, step, step / max_steps, chunk, metrics)]
        if step % STEPS_PER_CHUNK == 0:
            eval_loss = loss_at(knobs, x) + 0.08 + 0.0009 * x * (lr < 5e-4)
            records.append(MetricRecord(run_id, step, step / max_steps, chunk, {"eval_loss": eval_loss}))
        fields = {"global_step": step, "chunks_done": step // STEPS_PER_CHUNK}
        if run["status"] == RunStatus.NEW.value:
            fields["status"] = RunStatus.ONGOING
        if step >= max_steps:
            fields["status"] = RunStatus.COMPLETED
        if fields.get("status") == RunStatus.COMPLETED and run["status"] == RunStatus.NEW.value:
            self.runs.update_run(run_id, status=RunStatus.ONGOING)
        self.runs.update_run(run_id, **fields)
        return records

    # ---- commands ----------------------------------------------------------------------------
    def apply_commands(self) -> None:
        for command in self.commands.pending():
            if not self.commands.claim(command.command_id):
                continue
            try:
                result = self._apply(command)
            except (IllegalTransition, KeyError, ValueError) as exc:
                self.commands.finish(command.command_id, error=str(exc).strip("'\""))
            else:
                self.commands.finish(command.command_id, result=result)

    def _apply(self, command) -> dict | None:
        run = self.runs.get_run(command.run_id)
        if command.op == "stop":
            self.runs.update_run(run["run_id"], status=RunStatus.STOPPED)
        elif command.op == "resume":
            self.runs.update_run(run["run_id"], status=RunStatus.ONGOING)
        elif command.op == "delete":
            self.runs.update_run(run["run_id"], status=RunStatus.DELETED)
        elif command.op == "clone":
            return {"run_id": self._clone(run, command.payload)}
        return None

    def _clone(self, parent: dict, payload: dict) -> int:
        knobs = dict(parent["knobs"])
        for key, value in payload["changes"].items():
            # A full name (train.weight_decay) may add a knob; a short one must name an existing knob.
            full = (
                key
                if key in knobs or "." in key
                else next((k for k in knobs if k.split(".")[-1] == key), None)
            )
            if full is None:
                raise ValueError(f"clone of run {parent['run_id']}: unknown knob {key!r}")
            if full == "train.learning_rate":
                _check_learning_rate(key, value)
            knobs[full] = value
        warm = payload["warm_start"]
        name = f"run-{len(self.runs.runs()) + 1}"
        run_id = self.runs.create_run(name, parent["trainer_type"], knobs, parent["run_id"], warm)
        if warm:
            self._offset[run_id] = parent["global_step"] + self._offset.get(parent["run_id"], 0)
        return run_id


def _check_learning_rate(key: str, value) -> None:
    """The engine's config validation, as far as these tests need it (its message shape)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(
            f"clone change {key}={value!r}: RFSFTConfig.learning_rate: expected float, got "
            f"{type(value).__name__} {value!r}"
        )
    if value <= 0:
        raise ValueError(
            f"clone change {key}={value!r}: RFSFTConfig.learning_rate: must be > 0, got {value!r}"
        )
