"""Builds one stock TRL trainer per run, wired to the chunk scheduler.

The only change to TRL's trainers is the train sampler: `_get_train_sampler` returns the
run's chunk sampler (see `rapidfire_core.scheduler.chunks`). Everything else (loss, schedule,
accumulation, clipping, logging, evaluation) is TRL's own code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from transformers.trainer_callback import PrinterCallback
from trl import DPOTrainer, GRPOTrainer, SFTTrainer

from rapidfire_core.scheduler.chunks import ChunkedSampler, ChunkPlan, GroupedRepeatSampler


class _ChunkSamplerMixin:
    rapidfire_sampler = None

    def _get_train_sampler(self, train_dataset=None):
        if self.rapidfire_sampler is None:
            raise RuntimeError("the engine did not set a chunk sampler on this trainer")
        return self.rapidfire_sampler


class ChunkedSFTTrainer(_ChunkSamplerMixin, SFTTrainer):
    pass


class ChunkedDPOTrainer(_ChunkSamplerMixin, DPOTrainer):
    pass


class ChunkedGRPOTrainer(_ChunkSamplerMixin, GRPOTrainer):
    pass


TRAINER_CLASSES = {"SFT": ChunkedSFTTrainer, "DPO": ChunkedDPOTrainer, "GRPO": ChunkedGRPOTrainer}


@contextlib.contextmanager
def reference_is_base_model(model, adapter_name: str | None) -> Iterator[None]:
    """Keep TRL's DPO/GRPO reference = the base model with adapters disabled.

    Given a PeftModel, TRL's DPO and GRPO trainers look up the adapter named "default" and
    copy it into a new "ref" adapter used for reference log-probs. Our adapters are named per
    run, and with a freshly initialised LoRA (B = 0) the reference is exactly the base model,
    which is what TRL uses when it creates the adapter itself (it then disables adapters for
    the reference pass). So: alias "default" to this run's config while the trainer is built,
    then delete the "ref" adapter TRL added; with no "ref" adapter TRL disables adapters.
    """
    peft_config = getattr(model, "peft_config", None)
    if adapter_name is None or peft_config is None or "default" in peft_config:
        yield
        return
    peft_config["default"] = peft_config[adapter_name]
    try:
        yield
    finally:
        del peft_config["default"]
        if "ref" in peft_config:
            model.delete_adapter("ref")
        model.set_adapter(adapter_name)


def build_trainer(
    trainer_type: str,
    *,
    model,
    tokenizer,
    args,
    adapter_name: str | None,
    train_dataset,
    eval_dataset,
    reward_funcs: Any,
    callbacks: list,
):
    cls = TRAINER_CLASSES[trainer_type]
    kwargs: dict[str, Any] = dict(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    if trainer_type == "GRPO":
        kwargs["reward_funcs"] = reward_funcs
    if adapter_name is not None:
        model.set_adapter(adapter_name)
    if trainer_type in ("DPO", "GRPO"):
        with reference_is_base_model(model, adapter_name):
            trainer = cls(**kwargs)
    else:
        trainer = cls(**kwargs)
    # With tqdm disabled, transformers prints every log dict; the engine has its own display.
    trainer.remove_callback(PrinterCallback)
    return trainer


def make_sampler(trainer_type: str, trainer, plan: ChunkPlan):
    if trainer_type == "GRPO":
        args = trainer.args
        return GroupedRepeatSampler(
            plan,
            mini_repeat_count=trainer.num_generations,
            prompts_per_batch=args.generation_batch_size // trainer.num_generations,
            repeat_count=trainer.num_iterations * args.steps_per_generation,
        )
    return ChunkedSampler(plan)
