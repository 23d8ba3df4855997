"""Time-sliced engine vs the user's status quo: the same N configs trained one after another
with stock TRL (each loading its model and building its trainer), and the cost of chunking.

    pytest -m bench benchmarks/bench_time_sliced.py --benchmark-only

Same work in every case: N=4 LoRA configs x STEPS optimizer steps on the demo's pretrained tiny
chat model, fp32, no eval set. Reported (extra_info): wall seconds and tokens/s. The engine
with 1 chunk vs 8 chunks isolates the chunk-boundary overhead (hand-offs, forced logs).
"""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTTrainer

from rapidfire_core import Experiment
from rapidfire_core.automl import List, RFGridSearch, RFLoraConfig, RFModelConfig, RFSFTConfig
from rapidfire_core.demo.data import formatting_function, support_dataset
from rapidfire_core.demo.tiny_model import demo_assets

pytestmark = pytest.mark.bench

STEPS, BATCH, ROWS = 16, 4, 64
LEARNING_RATES = [1e-3, 1e-4]
LORAS = [
    dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    dict(r=32, lora_alpha=64, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
]


def create_model(model_config):
    model = AutoModelForCausalLM.from_pretrained(model_config["model_name"])
    return model, AutoTokenizer.from_pretrained(model_config["model_name"])


def _train_args(lr):
    return dict(
        learning_rate=lr, max_steps=STEPS, per_device_train_batch_size=BATCH, max_length=256, logging_steps=1
    )


@pytest.fixture(scope="module")
def model_dir():
    return str(demo_assets().model_path)


def _engine(model_dir, tmp_path, num_chunks):
    config = RFModelConfig(
        model_name=model_dir,
        peft_config=List([RFLoraConfig(**lora) for lora in LORAS]),
        training_args=RFSFTConfig(**{**_train_args(1e-3), "learning_rate": List(LEARNING_RATES)}),
        formatting_func=formatting_function,
    )
    exp = Experiment(f"bench-{num_chunks}", experiment_path=tmp_path, verbose=False)
    exp.run_fit(
        RFGridSearch(config, trainer_type="SFT"), create_model, support_dataset(ROWS), num_chunks=num_chunks
    )
    assert (exp.get_runs_info()["status"] == "COMPLETED").all()
    exp.end()


def _sequential_stock(model_dir, tmp_path):
    from peft import LoraConfig
    from trl import SFTConfig

    rows = support_dataset(ROWS).map(
        formatting_function, remove_columns=["instruction", "response", "intent", "category"]
    )
    for lr in LEARNING_RATES:
        for i, lora in enumerate(LORAS):
            model, tokenizer = create_model({"model_name": model_dir})
            args = SFTConfig(
                output_dir=str(tmp_path / f"stock-{lr}-{i}"),
                report_to="none",
                save_strategy="no",
                disable_tqdm=True,
                use_cpu=True,
                bf16=False,
                **_train_args(lr),
            )
            SFTTrainer(
                model=model,
                args=args,
                train_dataset=rows,
                processing_class=tokenizer,
                peft_config=LoraConfig(**lora),
            ).train()


@pytest.mark.benchmark(group="time-sliced-4-configs")
def test_sequential_stock_trl(benchmark, model_dir, tmp_path):
    benchmark.pedantic(_sequential_stock, args=(model_dir, tmp_path), rounds=3, iterations=1, warmup_rounds=0)


@pytest.mark.benchmark(group="time-sliced-4-configs")
@pytest.mark.parametrize("num_chunks", [1, 4, 8])
def test_engine(benchmark, model_dir, tmp_path, num_chunks):
    benchmark.pedantic(
        _engine, args=(model_dir, tmp_path, num_chunks), rounds=3, iterations=1, warmup_rounds=0
    )
