"""The user's TRL callbacks reach every run's trainer: each run has its own copy, sees exactly the
events stock TRL emits for that config (not the engine's chunk-end log and evaluation), may steer
training as under stock TRL, and fails only its own run when it raises."""

from __future__ import annotations

import torch
from transformers import TrainerCallback
from trl import SFTTrainer

from rapidfire_core import Experiment
from rapidfire_core.automl import List, RFGridSearch, RFLoraConfig, RFModelConfig, RFSFTConfig
from rapidfire_core.demo.data import formatting_function, support_dataset
from rapidfire_core.scheduler.chunks import ChunkPlan
from tests.stock_trl import EpochOrderSampler, _ordered

NUM_ROWS, NUM_CHUNKS, SEED = 16, 4, 42
LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
COPIES: list[Recorder] = []  # every copy that started training, in order (deep copies share class attributes)


class Recorder(TrainerCallback):
    """Records (event, step, logged keys) of every event it is given."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_train_begin(self, args, state, control, **kwargs):
        COPIES.append(self)
        self.events.append(("on_train_begin", state.global_step))


def _recording(event):
    def record(self, args, state, control, **kwargs):
        logs = kwargs.get("logs")
        self.events.append((event, state.global_step) + ((tuple(sorted(logs)),) if logs else ()))

    return record


for _event in ("on_step_begin", "on_step_end", "on_epoch_begin", "on_epoch_end", "on_log", "on_evaluate",
               "on_prediction_step", "on_train_end"):  # fmt: skip
    setattr(Recorder, _event, _recording(_event))


class StopAt(TrainerCallback):
    """Ends training after its own `limit`-th optimizer step (a per-run counter)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.steps = limit, 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1
        if self.steps >= self.limit:
            control.should_training_stop = True


class Explodes(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise RuntimeError("callback exploded at step 2")


def _args(**overrides):
    base = dict(learning_rate=1e-3, max_steps=8, per_device_train_batch_size=2, logging_steps=1, max_length=64,
                seed=7)  # fmt: skip
    return RFSFTConfig(**{**base, **overrides})


def _stock(create_model, model_dir, args, callbacks, train, evals=None):
    """Stock SFTTrainer on the engine's data order with `callbacks`: its per-step losses."""
    formatted = train.map(formatting_function, remove_columns=train.column_names)
    eval_formatted = (
        None if evals is None else evals.map(formatting_function, remove_columns=evals.column_names)
    )
    model, tokenizer = create_model({"model_name": model_dir})
    trl_args = args.to_trl(output_dir="/tmp/rapidfire-stock-callbacks", report_to="none", save_strategy="no")
    trainer = _ordered(SFTTrainer)(model=model, args=trl_args, train_dataset=formatted, eval_dataset=eval_formatted,
                                   processing_class=tokenizer, peft_config=RFLoraConfig(**LORA).to_peft(),
                                   callbacks=callbacks)  # fmt: skip
    trainer.reference_sampler = EpochOrderSampler([ChunkPlan(len(train), NUM_CHUNKS, SEED).order(0)])
    trainer.train()
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


def test_each_run_has_its_own_copy_and_sees_stock_trls_events(tmp_path, tiny_model_dir, create_tiny_model):
    # Stock TRL logs at steps 3 and 6 and evaluates at 3, 6 and 8; the engine also logs and
    # evaluates at every chunk end (steps 2, 4, 6, 8). The user's callback must see only stock's.
    COPIES.clear()
    mine = Recorder()
    args = _args(learning_rate=List([1e-3, 5e-4]), logging_steps=3, eval_strategy="steps", eval_steps=3,
                 per_device_eval_batch_size=2, callbacks=[mine])  # fmt: skip
    config = RFModelConfig(model_name=tiny_model_dir, peft_config=RFLoraConfig(**LORA), training_args=args,
                           formatting_func=formatting_function)  # fmt: skip
    train, evals = support_dataset(NUM_ROWS, seed=3), support_dataset(4, seed=9)
    exp = Experiment("callbacks-events", experiment_path=tmp_path, verbose=False)
    exp.run_fit(RFGridSearch(config), create_tiny_model, train, evals, num_chunks=NUM_CHUNKS, seed=SEED)
    assert exp.get_runs_info()["status"].tolist() == ["COMPLETED"] * 2
    assert exp.get_results().groupby("run_id")["eval_loss"].count().tolist() == [5, 5]  # 2, 3, 4, 6, 8
    engine_copies = list(COPIES)
    assert len(engine_copies) == 2 and mine not in engine_copies and mine.events == []

    reference = Recorder()
    _stock(create_tiny_model, tiny_model_dir, _args(logging_steps=3, eval_strategy="steps", eval_steps=3,
                                                    per_device_eval_batch_size=2), [reference], train, evals)  # fmt: skip
    # stock evaluates at 3, 6 and (a step strategy's last step) 8
    assert [e[1] for e in reference.events if e[0] == "on_evaluate"] == [3, 6, 8]
    for copy in engine_copies:
        assert copy.events == reference.events
    exp.end()


def test_a_callback_that_steers_training_steers_each_run_as_stock_trl(
    tmp_path, tiny_model_dir, create_tiny_model
):
    # StopAt counts its own steps: one instance shared by both runs would stop run 2 after its first
    # step (the two runs' turns interleave); each run's own copy stops it after its own 3rd.
    stop = StopAt(3)
    config = RFModelConfig(model_name=tiny_model_dir, peft_config=RFLoraConfig(**LORA), callbacks=[stop],
                           training_args=_args(seed=List([7, 8])), formatting_func=formatting_function)  # fmt: skip
    train = support_dataset(NUM_ROWS, seed=3)
    exp = Experiment("callbacks-steer", experiment_path=tmp_path, verbose=False)
    exp.run_fit(RFGridSearch(config), create_tiny_model, train, num_chunks=NUM_CHUNKS, seed=SEED)
    info = exp.get_runs_info()
    assert info["status"].tolist() == ["COMPLETED"] * 2 and info["global_step"].tolist() == [3, 3]
    assert stop.steps == 0  # the user's own instance was never trained with
    engine = exp.get_results().query("run_id == 1")["loss"].tolist()
    stock = _stock(create_tiny_model, tiny_model_dir, _args(), [StopAt(3)], train)
    assert len(stock) == 3
    torch.testing.assert_close(torch.tensor(engine), torch.tensor(stock), rtol=1e-5, atol=1e-6)
    exp.end()


def test_a_callback_that_raises_fails_only_its_run(tmp_path, tiny_model_dir, create_tiny_model):
    class ExplodesAtInit(TrainerCallback):
        def on_init_end(self, args, state, control, **kwargs):
            raise ValueError("callback refused to start")

    config = RFModelConfig(model_name=tiny_model_dir, peft_config=RFLoraConfig(**LORA),
                           callbacks=List([None, [Explodes()], [ExplodesAtInit]]),
                           training_args=_args(max_steps=4), formatting_func=formatting_function)  # fmt: skip
    exp = Experiment("callbacks-fail", experiment_path=tmp_path, verbose=False)
    exp.run_fit(RFGridSearch(config), create_tiny_model, support_dataset(NUM_ROWS, seed=3), num_chunks=2)
    info = exp.get_runs_info().set_index("run_id")
    assert info["status"].tolist() == ["COMPLETED", "FAILED", "FAILED"]
    assert info.loc[2, "error"] == "RuntimeError: callback exploded at step 2"
    assert info.loc[3, "error"] == "ValueError: callback refused to start"
    assert info.loc[1, "global_step"] == 4 and info.loc[2, "global_step"] == 2
    exp.end()
