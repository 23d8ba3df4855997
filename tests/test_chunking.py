"""The chunk order outside the engine (`rapidfire_core.chunking`): a Hugging Face Trainer reads
the plan's rows, reports every chunk end with its evaluation, and stops when the listener says
so; a plain loop learns each chunk end at the step that completes it."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from rapidfire_core.chunking import ChunkedSampler, ChunkEnd, ChunkPlan, ChunkProgress, use_chunk_order

VOCAB = 97


class _Rows(Dataset):
    """Token rows that carry their index (``row``; -1 for an eval set's rows)."""

    def __init__(self, n: int, seed: int, train: bool = True) -> None:
        self.ids = torch.randint(1, VOCAB, (n, 6), generator=torch.Generator().manual_seed(seed))
        self.train = train

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "row": i if self.train else -1}


def _trainer(tmp_path, seen: list[int], with_eval: bool):
    from transformers import LlamaForCausalLM, Trainer, TrainingArguments

    from rapidfire_core.demo.tiny_model import tiny_llama_config

    def collate(items):
        seen.extend(item["row"] for item in items if item["row"] >= 0)
        ids = torch.stack([item["input_ids"] for item in items])
        return {"input_ids": ids, "labels": ids}

    torch.manual_seed(0)
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, per_device_eval_batch_size=4,
        num_train_epochs=1, logging_steps=100, save_strategy="no", report_to="none",
        use_cpu=True, disable_tqdm=True, remove_unused_columns=False,
    )  # fmt: skip
    return Trainer(
        model=LlamaForCausalLM(tiny_llama_config(VOCAB, hidden_size=32)),
        args=args,
        train_dataset=_Rows(12, seed=1),
        eval_dataset=_Rows(4, seed=2, train=False) if with_eval else None,
        data_collator=collate,
    )


def test_trainer_follows_the_chunks_evaluates_at_each_end_and_stops_on_request(tmp_path):
    seen: list[int] = []
    trainer = _trainer(tmp_path, seen, with_eval=True)
    calls: list[ChunkEnd] = []
    callback = use_chunk_order(
        trainer, num_chunks=3, seed=5, listener=lambda end: calls.append(end) or end.chunk == 2
    )
    trainer.train()
    plan = ChunkPlan(12, 3, seed=5)
    # chunks 1 and 2 (4 rows each: 2 steps of 2 rows), then stop (the loader may fetch one batch ahead)
    assert seen[:8] == plan.order(0)[:8]
    assert (
        [(e.chunk, e.global_step) for e in calls]
        == [(1, 2), (2, 4)]
        == [(e.chunk, e.global_step) for e in callback.ends]
    )
    assert all("eval_loss" in e.metrics for e in calls)
    assert trainer.state.global_step == 4


def test_trainer_without_eval_set_reports_the_training_log(tmp_path):
    seen: list[int] = []
    trainer = _trainer(tmp_path, seen, with_eval=False)
    callback = use_chunk_order(trainer, num_chunks=2, seed=5)
    trainer.train()
    assert seen == ChunkPlan(12, 2, seed=5).order(0)
    assert [(e.chunk, e.global_step) for e in callback.ends] == [(1, 3), (2, 6)]
    assert all("loss" in e.metrics for e in callback.ends)


def test_plain_loop_learns_each_chunk_end_at_the_step_that_completes_it():
    plan = ChunkPlan(10, 3, seed=0)  # chunks of 4, 3, 3 rows
    sampler = ChunkedSampler(plan)
    progress = ChunkProgress(sampler)
    ends = []
    for epoch in range(2):
        progress.start_epoch(epoch)
        loader = DataLoader(list(range(10)), batch_size=3, sampler=sampler, drop_last=True)
        rows = []
        for batch in loader:
            rows.extend(batch.tolist())
            ends.append(progress.step(len(batch)))
        assert rows == plan.order(epoch)[:9]
        ends.append(progress.end_epoch())  # the dropped last row: the epoch's last chunk closes
    # steps consume 3, 6, 9 rows: chunk 1 ends at 6 (>= 4), chunk 2 at 9 (>= 7), chunk 3 at the epoch end
    assert ends == [None, 1, 2, 3, None, 4, 5, 6]
