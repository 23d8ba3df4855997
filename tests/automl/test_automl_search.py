"""RFGridSearch / RFRandomSearch: expansion counts and order, sampling, validation, RunSpec."""

from __future__ import annotations

import json
import math
import warnings

import peft
import pytest
import trl

from rapidfire_core.automl import (
    List,
    Range,
    RFDPOConfig,
    RFGridSearch,
    RFGRPOConfig,
    RFLoraConfig,
    RFModelConfig,
    RFRandomSearch,
    RFSFTConfig,
    RunSpec,
)
from rapidfire_core.automl.translate import assume_gpu
from rapidfire_core.errors import ConfigError, ConfigTranslationWarning
from tests.seed_configs import cookbook_sft_configs

MODEL = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"


@pytest.fixture(autouse=True)
def _no_gpu():
    with assume_gpu(False), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigTranslationWarning)
        warnings.simplefilter("ignore", FutureWarning)  # TRL's own gradient_checkpointing deprecation
        yield


def formatting_function(row):
    return {"prompt": row["instruction"], "completion": row["response"]}


def reward_len(completions, **kwargs):
    return [float(len(c)) for c in completions]


def reward_one(completions, **kwargs):
    return [1.0 for _ in completions]


def cookbook_configs() -> List:
    """Seed 002's config_set_lite: 2 learning rates x 2 LoRA configs."""
    return cookbook_sft_configs(MODEL, formatting_function)


def test_cookbook_grid_gives_four_runs_in_documented_order():
    group = RFGridSearch(configs=cookbook_configs(), trainer_type="SFT")
    runs = group.expand()
    assert group.trainer_type == "SFT"
    assert [(r.knobs["train.learning_rate"], r.knobs["peft.r"]) for r in runs] == [
        (1e-3, 8),
        (1e-3, 32),
        (1e-4, 8),
        (1e-4, 32),
    ]
    for run in runs:
        assert isinstance(run, RunSpec) and run.trainer_type == "SFT"
        assert isinstance(run.model_config.peft_config, RFLoraConfig)
        assert isinstance(run.model_config.training_args, RFSFTConfig)
        json.dumps(run.knobs)  # JSON-friendly
    assert runs[0].knobs["formatting_func"] == "formatting_function"
    assert runs[0].knobs["peft.target_modules"] == ["q_proj", "v_proj"]
    assert runs[0].knobs["model_kwargs.torch_dtype"] == "auto"
    # runs are independent objects
    runs[0].model_config.peft_config.r = 4
    assert runs[2].model_config.peft_config.r == 8


def test_runspec_materializes_and_feeds_create_model():
    run = RFGridSearch(cookbook_configs(), trainer_type="sft").expand()[1]
    args = run.training_args(output_dir="/tmp/rf-run", report_to="none", disable_tqdm=True)
    assert type(args) is trl.SFTConfig and args.learning_rate == 1e-3 and args.fp16 is False  # CPU fallback
    lora = run.lora_config()
    assert type(lora) is peft.LoraConfig and lora.r == 32 and lora.lora_alpha == 64
    d = run.create_model_dict()
    assert d["model_name"] == MODEL and d["model_type"] == "causal_lm"
    assert d["model_kwargs"] == {"device_map": "auto", "torch_dtype": "auto", "use_cache": False}
    assert d["tokenizer_kwargs"] == {} and d["trainer_type"] == "SFT" and d["peft_params"]["r"] == 32


def test_list_inside_list_and_inside_model_kwargs_and_training_args():
    mc = RFModelConfig(
        model_name=MODEL,
        peft_config=List([RFLoraConfig(r=List([4, 8])), List([RFLoraConfig(r=16), RFLoraConfig(r=32)])]),
        training_args=RFSFTConfig(learning_rate=List([1e-3, 1e-4]), max_steps=2),
        model_kwargs={"torch_dtype": List(["float32", "bfloat16"]), "use_cache": False},
    )
    runs = RFGridSearch(mc).expand()
    assert len(runs) == 4 * 2 * 2
    # declaration order: peft_config (outer) -> training_args -> model_kwargs (inner)
    first = [
        (r.knobs["peft.r"], r.knobs["train.learning_rate"], r.knobs["model_kwargs.torch_dtype"])
        for r in runs[:4]
    ]
    assert first == [(4, 1e-3, "float32"), (4, 1e-3, "bfloat16"), (4, 1e-4, "float32"), (4, 1e-4, "bfloat16")]
    assert [r.knobs["peft.r"] for r in runs[::4]] == [4, 8, 16, 32]
    assert runs[0].create_model_dict()["model_kwargs"] == {"torch_dtype": "float32", "use_cache": False}


def test_single_config_and_python_list_are_accepted():
    one = RFModelConfig(model_name=MODEL, training_args=RFSFTConfig(max_steps=1))
    assert len(RFGridSearch(one).expand()) == 1
    assert len(RFGridSearch([one, one.copy()]).expand()) == 2
    run = RFGridSearch(RFModelConfig(model_name=MODEL)).expand()[0]
    assert isinstance(run.model_config.training_args, RFSFTConfig) and run.lora_config() is None


def test_range_in_grid_needs_num_points():
    mc = RFModelConfig(model_name=MODEL, training_args=RFSFTConfig(learning_rate=Range(1e-5, 1e-3, log=True)))
    with pytest.raises(ConfigError) as err:
        RFGridSearch(mc).expand()
    msg = str(err.value)
    assert "configs[0].training_args.learning_rate" in msg and "num_points" in msg and "RFRandomSearch" in msg
    mc.training_args.learning_rate = Range(1e-5, 1e-3, log=True, num_points=3)
    lrs = [r.knobs["train.learning_rate"] for r in RFGridSearch(mc).expand()]
    assert lrs[0] == 1e-5 and math.isclose(lrs[1], 1e-4) and lrs[2] == 1e-3


def _random_space() -> List:
    return List(
        [
            RFModelConfig(
                model_name=MODEL,
                peft_config=RFLoraConfig(r=List([4, 8, 16, 32]), lora_alpha=Range(8, 64)),
                training_args=RFSFTConfig(learning_rate=Range(1e-6, 1e-2, log=True), max_steps=2),
            ),
            RFModelConfig(
                model_name="other/model", training_args=RFSFTConfig(learning_rate=Range(1e-5, 1e-4))
            ),
        ]
    )


def test_random_search_is_reproducible_and_seed_dependent():
    draws_a = [r.knobs for r in RFRandomSearch(_random_space(), num_runs=6, seed=7).expand()]
    draws_b = [r.knobs for r in RFRandomSearch(_random_space(), num_runs=6, seed=7).expand()]
    draws_c = [r.knobs for r in RFRandomSearch(_random_space(), num_runs=6, seed=8).expand()]
    assert draws_a == draws_b and draws_a != draws_c
    assert len(draws_a) == 6
    assert {
        d["model_name"]
        for d in RFRandomSearch(_random_space(), num_runs=20, seed=0).expand()
        for d in [d.knobs]
    } == {MODEL, "other/model"}  # the top-level List is sampled too
    for d in draws_a:
        lr = d["train.learning_rate"]
        assert (1e-6 <= lr <= 1e-2) if d["model_name"] == MODEL else (1e-5 <= lr <= 1e-4)


def test_random_search_rejects_impossible_num_runs():
    mc = RFModelConfig(model_name=MODEL, peft_config=RFLoraConfig(r=List([8, 16])))
    assert len(RFRandomSearch(mc, num_runs=2, seed=0).expand()) == 2
    with pytest.raises(ConfigError, match="only 2 distinct configs"):
        RFRandomSearch(mc, num_runs=3, seed=0).expand()
    with pytest.raises(ConfigError, match="num_runs"):
        RFRandomSearch(mc, num_runs=0)


@pytest.mark.parametrize("trainer_type", ["SFT", "DPO", "GRPO"])
def test_random_search_for_each_trainer_materializes(trainer_type):
    training = {
        "SFT": RFSFTConfig(
            learning_rate=Range(1e-5, 1e-3, log=True), max_length=List([128, 256]), warmup_ratio=0.1
        ),
        "DPO": RFDPOConfig(
            beta=Range(0.01, 0.5, log=True),
            loss_type=List(["sigmoid", "robust"]),
            max_prompt_length=64,
            max_completion_length=64,
            warmup_ratio=0.05,
        ),
        "GRPO": RFGRPOConfig(
            learning_rate=Range(1e-6, 1e-5),
            num_generations=List([2, 4]),
            per_device_train_batch_size=4,
            max_completion_length=List([32, 64]),
            beta=0.0,
        ),
    }[trainer_type]
    mc = RFModelConfig(
        model_name=MODEL,
        peft_config=RFLoraConfig(r=List([4, 8]), target_modules=["q_proj"]),
        training_args=training,
        reward_funcs=[reward_len, reward_one],
    )
    runs = RFRandomSearch(List([mc]), trainer_type=trainer_type.lower(), num_runs=3, seed=3).expand()
    assert len(runs) == 3
    library = {"SFT": trl.SFTConfig, "DPO": trl.DPOConfig, "GRPO": trl.GRPOConfig}[trainer_type]
    for run in runs:
        args = run.training_args(output_dir="/tmp/rf-rand")
        assert type(args) is library and args.use_cpu is True
        assert run.lora_config().r in (4, 8)
    if trainer_type == "DPO":
        assert all(r.training_args(output_dir="/tmp/x").max_length == 128 for r in runs)
    if trainer_type == "GRPO":
        assert runs[0].create_model_dict()["reward_funcs"] == [reward_len, reward_one]
        assert runs[0].knobs["reward_funcs"] == ["reward_len", "reward_one"]


def test_trainer_type_mismatch_is_reported_per_run():
    mc = RFModelConfig(
        model_name=MODEL,
        peft_config=List([RFLoraConfig(r=8), RFLoraConfig(r=16)]),
        training_args=RFSFTConfig(max_steps=1),
    )
    with pytest.raises(ConfigError) as err:
        RFGridSearch(mc, trainer_type="DPO").expand()
    msg = str(err.value)
    assert "2 of 2 runs invalid" in msg
    assert "run 1 {peft.r=8}" in msg and "run 2 {peft.r=16}" in msg
    assert "training_args is RFSFTConfig but trainer_type='DPO' needs RFDPOConfig" in msg
    # a plain TRL config of the right kind is accepted
    plain = trl.SFTConfig(output_dir="/tmp/x", use_cpu=True, learning_rate=3e-4, max_steps=2)
    run = RFGridSearch(RFModelConfig(model_name=MODEL, training_args=plain)).expand()[0]
    assert run.knobs["train.learning_rate"] == 3e-4 and run.training_args(output_dir="/tmp/y").max_steps == 2


def test_grpo_generation_batch_must_divide_by_num_generations():
    mc = RFModelConfig(
        model_name=MODEL,
        reward_funcs=reward_one,
        training_args=RFGRPOConfig(
            per_device_train_batch_size=3, gradient_accumulation_steps=2, num_generations=List([2, 4])
        ),
    )
    with pytest.raises(ConfigError) as err:
        RFGridSearch(mc, trainer_type="GRPO").expand()
    msg = str(err.value)
    assert "1 of 2 runs invalid" in msg and "run 2 {train.num_generations=4}" in msg
    assert (
        "per_device_train_batch_size (3) * gradient_accumulation_steps (2) = 6 is not divisible by "
        "num_generations (4)"
    ) in msg
    mc.training_args.num_generations = 3
    assert len(RFGridSearch(mc, trainer_type="GRPO").expand()) == 1


def test_grpo_needs_reward_funcs_and_model_name_is_required():
    mc = RFModelConfig(
        model_name=MODEL, training_args=RFGRPOConfig(num_generations=2, per_device_train_batch_size=2)
    )
    with pytest.raises(ConfigError, match="needs RFModelConfig.reward_funcs"):
        RFGridSearch(mc, trainer_type="GRPO").expand()
    with pytest.raises(ConfigError, match="model_name is required"):
        RFGridSearch(RFModelConfig(training_args=RFSFTConfig())).expand()


def test_trl_validation_errors_surface_at_expand():
    mc = RFModelConfig(
        model_name=MODEL,
        training_args=RFDPOConfig(loss_type=["sigmoid", "sft"], loss_weights=List([[1.0], [0.5, 0.5]])),
    )
    with pytest.raises(ConfigError) as err:
        RFGridSearch(mc, trainer_type="DPO").expand()
    assert "1 of 2 runs invalid" in str(err.value) and "run 1 {" in str(err.value)
    assert "trl.DPOConfig rejected" in str(err.value)


def test_bad_group_arguments():
    with pytest.raises(ConfigError, match="trainer_type must be one of SFT, DPO, GRPO"):
        RFGridSearch(RFModelConfig(model_name=MODEL), trainer_type="PPO")
    with pytest.raises(ConfigError, match=r"configs\[1\] must be an RFModelConfig"):
        RFGridSearch([RFModelConfig(model_name=MODEL), {"model_name": MODEL}])
    with pytest.raises(ConfigError, match="configs is empty"):
        RFGridSearch([])
