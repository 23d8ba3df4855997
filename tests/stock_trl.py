"""Reference runs with stock TRL on the engine's data order, for fidelity tests.

The engine feeds a run the rows of `ChunkPlan.order(epoch)` in epoch `epoch`. A stock
`SFTTrainer` sees the same rows in the same epochs when its train sampler yields those
orders (it is multi-epoch like the engine's run, so per-epoch effects such as the RNG draw of
each new DataLoader iterator are the same); nothing else about TRL is changed.
"""

from __future__ import annotations

from torch.utils.data import Sampler
from trl import SFTTrainer

from rapidfire_core.scheduler.chunks import ChunkPlan


class EpochOrderSampler(Sampler[int]):
    def __init__(self, orders: list[list[int]]) -> None:
        self.orders = orders
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(self.orders[self.epoch])

    def __len__(self) -> int:
        return len(self.orders[0])


def _ordered(trainer_cls):
    class Ordered(trainer_cls):
        reference_sampler: EpochOrderSampler

        def _get_train_sampler(self, train_dataset=None):
            return self.reference_sampler

    return Ordered


def stock_run(
    trainer_cls,
    create_model,
    model_config: dict,
    lora_config,
    args,
    train_rows,
    formatting_func,
    plan: ChunkPlan,
    epochs: int,
    with_history: bool = False,
):
    """Train one config with a stock TRL trainer class; returns (per-step losses, adapter weights),
    and with ``with_history`` also the trainer's log history (every logged metric, per step)."""
    from peft import get_peft_model_state_dict

    dataset = (
        train_rows
        if formatting_func is None
        else train_rows.map(formatting_func, remove_columns=train_rows.column_names)
    )
    model, tokenizer = create_model(model_config)
    trainer = _ordered(trainer_cls)(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora_config
    )
    trainer.reference_sampler = EpochOrderSampler([plan.order(epoch) for epoch in range(epochs)])
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    weights = {k: v.detach().clone() for k, v in get_peft_model_state_dict(trainer.model).items()}
    if with_history:
        return losses, weights, trainer.state.log_history
    return losses, weights


def stock_sft_run(create_model, model_config, lora_config, args, train_rows, formatting_func, plan, epochs):
    return stock_run(
        SFTTrainer, create_model, model_config, lora_config, args, train_rows, formatting_func, plan, epochs
    )


# fp32 machine epsilon (2^-23): the relative rounding of one fp32 operation.
FP32_EPS = 1.1920929e-07


def fp32_atol(scale: float, margin: float = 16.0) -> float:
    """Absolute tolerance for a value the engine computes in fp32 in another summation order than
    stock TRL (a fused batch, other matmul tiles, AVX2 instead of AVX-512 kernels): each rounded
    partial sum moves it by about ``FP32_EPS * scale``, ``scale`` being the magnitude of the terms it
    sums (not of the result: DPO rewards are ``beta * (sum of ~250 log-probs)`` minus the same for the
    reference, ~1e-2 from terms ~1e2, and moved by 1.1e-5 on an AMD EPYC). ``margin`` covers the
    number of such roundings on the way (a few layers, an optimizer step)."""
    return margin * FP32_EPS * scale


def assert_metrics_equal_stock(
    results, run_id: int, history, metrics, steps: int, scales: dict[str, float] | None = None
) -> None:
    """Each of ``metrics`` the engine logged for ``run_id`` (a results frame) equals, step by step,
    what the stock trainer logged (its ``log_history``), over ``steps`` steps: rtol 1e-5 plus
    `fp32_atol` of the metric's scale (``scales[metric]``: the magnitude of the terms it sums;
    default: the largest magnitude stock logged for it)."""
    import torch

    mine = results[results.run_id == run_id]
    for metric in metrics:
        stock = [
            e[metric] for e in history if metric in e and "eval_loss" not in e and "train_runtime" not in e
        ]
        engine = mine[metric].dropna().tolist()
        assert len(engine) == len(stock) == steps, metric
        scale = (scales or {}).get(metric, max(abs(v) for v in stock))
        torch.testing.assert_close(
            torch.tensor(engine, dtype=torch.float64), torch.tensor(stock, dtype=torch.float64),
            rtol=1e-5, atol=fp32_atol(scale), msg=metric,
        )  # fmt: skip


def adapter_atol(learning_rate: float) -> float:
    """Tolerance for a trained adapter element vs stock's: each is a sum of Adam updates of size
    ~``learning_rate``; an element whose gradient sits at the fp32 noise floor (its Adam update
    ``m / sqrt(v)`` normalises the noise) can move by a small fraction of one update when the
    gradient is summed in another order: 1% of the learning rate. A wrong mask, step or schedule
    moves most elements by whole updates."""
    return 0.01 * learning_rate


def assert_adapter_equals_stock(run_dir, stock_weights, learning_rate: float) -> None:
    """The adapter the engine saved in ``run_dir`` equals the stock trainer's, key by key (rtol 1e-5,
    `adapter_atol`), and it trained (some lora_B moved from its zero init)."""
    import torch
    from safetensors.torch import load_file

    saved = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert saved.keys() == stock_weights.keys()
    for key, value in stock_weights.items():
        torch.testing.assert_close(
            saved[key],
            value,
            rtol=1e-5,
            atol=adapter_atol(learning_rate),
            msg=lambda m, key=key: f"{key}: {m}",
        )
    assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)


def dpo_metric_scales(history, beta: float) -> dict[str, float]:
    """`fp32_atol` scales of DPO's logged metrics: rewards, margins and the loss are ``beta`` times
    differences of summed completion log-probs, so their terms are ``beta * |logps/chosen|`` large
    (TRL logs those sums), however small the difference."""
    sums = [abs(e[k]) for e in history for k in ("logps/chosen", "logps/rejected") if k in e]
    scale = beta * max(sums)
    return {m: scale for m in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins")}
