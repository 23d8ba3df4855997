"""Chunk boundaries as the runs see them: alignment across epochs, labels of logged steps."""

from __future__ import annotations

from rapidfire_core import Experiment
from rapidfire_core.automl import List, RFGridSearch, RFLoraConfig, RFModelConfig, RFSFTConfig
from rapidfire_core.demo.data import formatting_function, support_dataset


def _config(model_dir, **train):
    return RFModelConfig(
        model_name=model_dir,
        peft_config=RFLoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]),
        training_args=RFSFTConfig(per_device_train_batch_size=4, max_length=64, logging_steps=1, **train),
        formatting_func=formatting_function,
    )


def test_logged_steps_carry_the_chunk_they_trained_on(tmp_path, tiny_model_dir, create_tiny_model):
    # 16 rows, 2 chunks of 8 rows, batch 4: two steps per chunk.
    exp = Experiment("labels", experiment_path=tmp_path, verbose=False)
    exp.run_fit(
        RFGridSearch(_config(tiny_model_dir, max_steps=6), trainer_type="SFT"),
        create_tiny_model,
        support_dataset(n=16),
        num_chunks=2,
    )
    results = exp.get_results()
    assert results["chunk"].tolist() == [1, 1, 2, 2, 3, 3]  # chunk rounds: epoch 2 continues at 3
    exp.end()


def test_drop_last_still_completes_every_chunk_of_an_epoch(tmp_path, tiny_model_dir, create_tiny_model):
    # 10 rows, 2 chunks of 5, batch 4, drop_last: 2 steps per epoch see 8 rows, so the last chunk's
    # final rows are never consumed; the epoch's end must still close its last chunk, or the runs
    # would fall out of step with each other (one training epoch 2 while another finishes epoch 1).
    configs = List([_config(tiny_model_dir, num_train_epochs=2, dataloader_drop_last=True, learning_rate=lr)
                    for lr in (1e-3, 1e-4)])  # fmt: skip
    exp = Experiment("drop-last", experiment_path=tmp_path, verbose=False)
    exp.run_fit(
        RFGridSearch(configs, trainer_type="SFT"), create_tiny_model, support_dataset(n=10), num_chunks=2
    )
    info = exp.get_runs_info()
    assert info["status"].tolist() == ["COMPLETED", "COMPLETED"]
    assert info["chunks_done"].tolist() == [4, 4]
    results = exp.get_results()
    # step 2 (rows 4-7) starts in chunk 1 and finishes chunk 1; the epoch's end closes chunk 2
    # (rows 8-9 dropped), so epoch 2 starts with chunk round 3 for every run.
    assert results[results.run_id == 1]["chunk"].tolist() == [1, 1, 3, 3]
    exp.end()
