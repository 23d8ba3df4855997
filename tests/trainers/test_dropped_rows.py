"""Rows TRL drops while it prepares a run's data (SFT: nothing left to train after truncation;
DPO: prompts of max_length tokens or more). Every run still trains to the end, each equals stock
TRL fed the rows that survive in the same order, and a chunk names the same source rows for every
run: a run that dropped a whole chunk completes it with the chunk before and stays aligned."""

from __future__ import annotations

import torch
from datasets import Dataset
from safetensors.torch import load_file
from trl import DPOTrainer, SFTTrainer

from rapidfire_core import Experiment
from rapidfire_core.automl import List, RFDPOConfig, RFGridSearch, RFLoraConfig, RFModelConfig, RFSFTConfig
from rapidfire_core.demo.data import formatting_function, preference_dataset, support_dataset
from rapidfire_core.scheduler.chunks import ChunkPlan
from tests.small_configs import LORA
from tests.stock_trl import EpochOrderSampler, _ordered

NUM_ROWS, NUM_CHUNKS, SEED = 16, 4, 42


def _long_rows(plan: ChunkPlan) -> set[int]:
    """All of epoch 0's second chunk, and the first row of its first chunk."""
    return set(plan.chunk_rows(0, 1)) | {plan.order(0)[0]}


def _lengthen(rows: list[dict], which: set[int], field: str) -> Dataset:
    for r in which:
        rows[r][field] = " ".join([rows[r][field]] * 10)  # ~200 tokens: more than max_length alone
    return Dataset.from_list(rows)


def _stock(trainer_cls, create_model, model_dir, lora, args, rows: Dataset, func, orders):
    """Stock TRL on `rows` (already only the survivors), fed `orders[epoch]`: (losses, adapter)."""
    from peft import get_peft_model_state_dict

    dataset = rows if func is None else rows.map(func, remove_columns=rows.column_names)
    model, tokenizer = create_model({"model_name": model_dir})
    trainer = _ordered(trainer_cls)(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                    peft_config=lora.to_peft())  # fmt: skip
    assert len(trainer.train_dataset) == len(rows)  # TRL drops none of the survivors
    trainer.reference_sampler = EpochOrderSampler(orders)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return losses, {k: v.detach().clone() for k, v in get_peft_model_state_dict(trainer.model).items()}


def _survivor_orders(plan: ChunkPlan, survivors: list[int], epochs: int) -> list[list[int]]:
    index = {row: i for i, row in enumerate(survivors)}
    return [[index[r] for r in plan.order(e) if r in index] for e in range(epochs)]


def _assert_matches(exp, run_id, stock):
    losses, weights = stock
    engine = exp.get_results().query(f"run_id == {run_id}")["loss"].dropna().tolist()
    assert len(engine) == len(losses)
    torch.testing.assert_close(torch.tensor(engine), torch.tensor(losses), rtol=1e-5, atol=1e-6)
    saved = load_file(str(exp.path / "runs" / str(run_id) / "adapter" / "adapter_model.safetensors"))
    assert saved.keys() == weights.keys()
    for key, value in weights.items():
        torch.testing.assert_close(saved[key], value, rtol=1e-5, atol=1e-6, msg=key)


def _assert_runs_match_stock(exp, trainer_cls, create_model, model_dir, lora, args, rows, func, long_rows):
    """Run 1 (which drops `long_rows`) and run 2 (which keeps all) each equal stock TRL."""
    plan = ChunkPlan(NUM_ROWS, NUM_CHUNKS, SEED)
    survivors = [r for r in range(NUM_ROWS) if r not in long_rows]
    stock_args = {i: a.to_trl(output_dir=str(exp.path / f"stock-{i}"), report_to="none", save_strategy="no")
                  for i, a in args.items()}  # fmt: skip
    # stock TRL itself drops exactly those rows from the full data
    model, tokenizer = create_model({"model_name": model_dir})
    full_data = rows if func is None else rows.map(func, remove_columns=rows.column_names)
    full = trainer_cls(model=model, args=stock_args[1], processing_class=tokenizer, peft_config=lora.to_peft(),
                       train_dataset=full_data)  # fmt: skip
    assert len(full.train_dataset) == len(survivors) == NUM_ROWS - len(long_rows)
    survivor_run = (stock_args[1], rows.select(survivors), _survivor_orders(plan, survivors, 2))
    for run_id, (run_args, run_rows, orders) in (
        (1, survivor_run),
        (2, (stock_args[2], rows, [plan.order(0)])),
    ):
        _assert_matches(exp, run_id, _stock(trainer_cls, create_model, model_dir, lora, run_args, run_rows, func,
                                            orders))  # fmt: skip


def _record_rounds(exp) -> dict[int, dict[int, int]]:
    seen: dict[int, dict[int, int]] = {}

    def hook(controller, round_number):
        seen[round_number] = {run.run_id: run.chunks_done for run in controller.runs.values()}

    exp.controller.hooks.round_end.append(hook)
    return seen


def test_sft_runs_train_to_the_end_on_the_rows_truncation_leaves(tmp_path, tiny_model_dir, create_tiny_model):
    # Run 1 (max_length=64) loses 5 rows: epoch 0's whole second chunk and the first row of its
    # first chunk (their prompts alone fill 64 tokens, so no completion token is left to train);
    # run 2 (no truncation) keeps all 16. Before, run 1 failed: "Invalid key ... out of bounds".
    plan = ChunkPlan(NUM_ROWS, NUM_CHUNKS, SEED)
    long_rows = _long_rows(plan)
    rows = _lengthen(support_dataset(n=NUM_ROWS, seed=3).to_list(), long_rows, "instruction")
    lora = RFLoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj"])
    common = dict(learning_rate=1e-3, max_steps=8, per_device_train_batch_size=2, logging_steps=1, seed=7)
    args = {1: RFSFTConfig(max_length=64, **common), 2: RFSFTConfig(max_length=None, **common)}
    config = RFModelConfig(model_name=tiny_model_dir, peft_config=lora, formatting_func=formatting_function,
                           training_args=List([args[1], args[2]]))  # fmt: skip
    exp = Experiment("sft-dropped", experiment_path=tmp_path, verbose=False)
    rounds = _record_rounds(exp)
    clone = []

    def warm_clone_after_round_1(controller, round_number):
        if round_number == 1:  # run 1 is paused after step 2, its 4th row: the first of chunk 3
            clone.append(exp.clone_run(1, {"max_length": None}, warm_start=True))

    exp.controller.hooks.round_end.append(warm_clone_after_round_1)
    group = RFGridSearch(config, trainer_type="SFT")
    # dropout 0.1 and exact equality with stock TRL: time-sliced (a fused step draws other masks)
    exp.run_fit(group, create_tiny_model, rows, num_chunks=NUM_CHUNKS, seed=SEED, execution="sliced")
    info = exp.get_runs_info().set_index("run_id")
    assert info["status"].tolist() == ["COMPLETED"] * 3, info["error"].tolist()
    _assert_runs_match_stock(exp, SFTTrainer, create_tiny_model, tiny_model_dir, lora, args, rows,
                             formatting_function, long_rows)  # fmt: skip

    results = exp.get_results()
    chunks = {run_id: results.query(f"run_id == {run_id}")["chunk"].tolist() for run_id in (1, 2)}
    # run 1: step 2 trains the last kept row of chunk 1 and the first of chunk 3 (chunk 2 is gone)
    assert chunks[1][:4] == [1, 1, 3, 3] and 2 not in chunks[1][:6]
    assert chunks[2] == [1, 1, 2, 2, 3, 3, 4, 4]
    # run 1 completed chunk 2 with chunk 1, sat out round 2 and is aligned with run 2 from round 2 on
    assert rounds[1][1] == 2 and rounds[1][2] == 1
    assert rounds[2][1] == rounds[2][2] == 2 and rounds[3][1] == rounds[3][2] == 3

    # The warm clone keeps every row, but starts at run 1's place in the plan: row 9 of epoch 0 (8,
    # the first of chunk 3, is behind it); it does not go back to the chunk-2 rows run 1 dropped.
    done = exp.wait_for(clone[0], timeout=1)
    assert done.status == "applied" and done.result["start_position"] == 9
    sampler = exp.controller.runs[3].sampler
    sampler.set_epoch(0)
    assert list(sampler)[:3] == plan.order(0)[9:12]  # it keeps every row: index = source row
    child = results.query("run_id == 3").reset_index(drop=True)
    assert child.loc[0, "chunk"] == 3 and info.loc[3, "global_step"] == 8
    exp.end()


def test_dpo_runs_train_to_the_end_when_long_prompts_are_dropped(tmp_path, tiny_model_dir, create_tiny_model):
    # DPO drops a pair whose prompt alone has max_length tokens or more: run 1 (max_length=48)
    # loses 5 of 16 pairs, a whole chunk among them; run 2 (max_length=512) keeps them all.
    plan = ChunkPlan(NUM_ROWS, NUM_CHUNKS, SEED)
    long_rows = _long_rows(plan)
    rows = _lengthen(preference_dataset(n=NUM_ROWS, seed=4).to_list(), long_rows, "prompt")
    lora = RFLoraConfig(**LORA)
    common = dict(beta=0.1, learning_rate=5e-3, max_steps=7, per_device_train_batch_size=2, logging_steps=1,
                  seed=5)  # fmt: skip
    args = {1: RFDPOConfig(max_length=48, **common), 2: RFDPOConfig(max_length=512, **common)}
    config = RFModelConfig(
        model_name=tiny_model_dir, peft_config=lora, training_args=List([args[1], args[2]])
    )
    exp = Experiment("dpo-dropped", experiment_path=tmp_path, verbose=False)
    rounds = _record_rounds(exp)
    group = RFGridSearch(config, trainer_type="DPO")
    exp.run_fit(group, create_tiny_model, rows, num_chunks=NUM_CHUNKS, seed=SEED)
    info = exp.get_runs_info().set_index("run_id")
    assert info["status"].tolist() == ["COMPLETED"] * 2, info["error"].tolist()
    _assert_runs_match_stock(
        exp, DPOTrainer, create_tiny_model, tiny_model_dir, lora, args, rows, None, long_rows
    )
    chunks = exp.get_results().query("run_id == 1")["chunk"].tolist()
    assert chunks[:2] == [1, 1] and 2 not in chunks[:5]
    assert rounds[1] == {1: 2, 2: 1} and rounds[2] == {1: 2, 2: 2}
    exp.end()


def test_a_grpo_warm_clone_with_another_batch_structure_starts_at_the_parents_row(
    tmp_path, tiny_model_dir, create_tiny_model
):
    # TRL 1.x GRPO drops no rows, but its generation batches make items differ from rows: the
    # parent (2 generations x 2 prompts per batch) has trained 2 batches = the 4 rows of chunk 1 when
    # it is cloned with 4 generations of 1 prompt per batch. The clone starts at plan row 4 (before,
    # at row 2: the parent's item count read in the clone's group size) and reports chunk 2.
    from rapidfire_core.automl import RFGRPOConfig
    from rapidfire_core.demo.data import math_prompt_dataset
    from rapidfire_core.demo.rewards import answer_reward, format_reward

    config = RFModelConfig(
        model_name=tiny_model_dir, peft_config=RFLoraConfig(**LORA), reward_funcs=[answer_reward, format_reward],
        training_args=RFGRPOConfig(learning_rate=1e-3, num_generations=2, per_device_train_batch_size=4,
                                   max_completion_length=4, max_steps=4, logging_steps=1, beta=0.0),
    )  # fmt: skip
    exp = Experiment("grpo-position", experiment_path=tmp_path, verbose=False)
    clone = []

    def warm_clone_after_round_1(controller, round_number):
        if round_number == 1:
            clone.append(exp.clone_run(1, {"num_generations": 4}, warm_start=True))

    exp.controller.hooks.round_end.append(warm_clone_after_round_1)
    rows = math_prompt_dataset(n=8)
    exp.run_fit(RFGridSearch(config, trainer_type="GRPO"), create_tiny_model, rows, num_chunks=2, seed=SEED)
    done = exp.wait_for(clone[0], timeout=1)
    assert done.status == "applied" and done.result["start_position"] == 4
    info = exp.get_runs_info().set_index("run_id")
    assert info["status"].tolist() == ["COMPLETED"] * 2, info["error"].tolist()
    sampler = exp.controller.runs[2].sampler
    sampler.set_epoch(0)
    first_prompt = next(iter(sampler))
    assert first_prompt == ChunkPlan(8, 2, SEED).order(0)[4]
    child = exp.get_results().query("run_id == 2").reset_index(drop=True)
    assert child.loc[0, "chunk"] == 2
    exp.end()


def test_a_run_whose_trainer_drops_every_row_fails_alone_with_the_reason(
    tmp_path, tiny_model_dir, create_tiny_model
):
    # max_length=8 is shorter than every prompt (system prompt included): stock TRL would have
    # nothing to train on either. That run fails with the reason; the other trains.
    config = RFModelConfig(model_name=tiny_model_dir, peft_config=RFLoraConfig(**LORA), formatting_func=formatting_function,
                           training_args=RFSFTConfig(max_length=List([8, 64]), max_steps=2, per_device_train_batch_size=2))  # fmt: skip
    exp = Experiment("all-dropped", experiment_path=tmp_path, verbose=False)
    exp.run_fit(
        RFGridSearch(config, trainer_type="SFT"), create_tiny_model, support_dataset(n=8), num_chunks=2
    )
    info = exp.get_runs_info()
    assert info["status"].tolist() == ["FAILED", "COMPLETED"]
    assert info["error"][0] == (
        "ValueError: SFT: TRL dropped all 8 training rows while preparing them (with max_length=8 no row keeps "
        "a token to train on); raise max_length"
    )
    exp.end()
