"""A run's side of a fused cohort step: its stock TRL `training_step`, with the model call and
the backward handed to the cohort.

A cohort member trains with its own unmodified TRL trainer in its own thread, exactly as a
time-sliced run does: its data loader, collator, `compute_loss` (TRL's loss code), gradient
accumulation, clipping, optimizer and scheduler are TRL's and transformers' own. Inside
`training_step` two things change while the run is fused:

- the model TRL's `compute_loss` calls is a `FusedModel`: the call is recorded as a
  `ModelCall` and the run gives the turn back (`FusedSlot.wait`); the cohort runs every
  member's call in one forward (`trainers.fused_calls`) and hands each its slice of the output,
  with which TRL computes the run's loss as usual;
- `accelerator.backward(loss)` records the loss, scaled exactly as accelerate scales it, and
  gives the turn back; the cohort runs ONE backward of all members' losses.

Each member's adapter receives the gradient of its own loss only (its rows pass through its
adapter alone), so the step equals the member's own step up to fp32 summation order.

DPO members also hand the cohort their batch's reference log-probs to compute
(`ReferenceRequest`): the cohort computes each distinct sequence once, adapters off, and
TRL's loss reads them as it reads precomputed reference log-probs.

GRPO members hand the cohort only their generation (`GenerateRequest`, through the shared
model's `generate`, see `install_fused_generate`): all members' prompts are completed in one
batched `generate` where each row uses its run's adapter. Rewards, advantages and the loss
step stay per run, in the run's own `training_step`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rapidfire_core.lora.run_streams import rng_state, set_rng_state
from rapidfire_core.trainers.fused_calls import ModelCall
from rapidfire_core.trainers.model_patches import RunModelSettings

# The trainer of the run whose thread this is (set once when the run's thread starts): the
# shared model's `generate` asks it whether the run is in a fused cohort turn.
_RUN_THREAD = threading.local()


class UnfusableRun(ValueError):
    """A run whose training step this module cannot hand to a cohort; it trains time-sliced."""


@dataclass
class GenerateRequest:
    """A member's `model.generate(**kwargs)` call, run by the cohort batched with the others'.

    kwargs: input_ids (B, P) left-padded prompts, attention_mask (B, P), generation_config, ...
    output: (B, P + new tokens) as its own `generate` would return (finished rows padded)."""

    adapter: str
    kwargs: dict[str, Any]
    settings: RunModelSettings | None = None  # the run's writes on the model (use_cache, ...)
    training: bool = True  # the model's mode when the run called (TRL's GRPO generates in training mode)
    rng_state: torch.Tensor | None = None  # the run's RNG state when it asked: its sampling's stream
    rng_after: torch.Tensor | None = None  # that state after its draws (None: nothing drawn)
    output: torch.Tensor | None = None
    error: BaseException | None = None


@dataclass
class ReferenceRequest:
    """A DPO member's batch whose reference log-probs (adapters off) the cohort computes.

    input_ids, attention_mask, completion_mask: (2B, T), chosen rows then rejected rows.
    logps: (2B,) the sum of each sequence's completion-token log-probs, set by the cohort."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    logps: torch.Tensor | None = None


class FusedSlot:
    """What passes between one member's thread and the cohort during a fused step.

    ``wait`` hands the turn back to the controller (the run pauses until the cohort resumes
    it). Exactly one of ``call``, ``loss`` and ``reference`` is set while the run waits."""

    def __init__(
        self, adapter: str, wait: Callable[[], None], settings: RunModelSettings | None = None
    ) -> None:
        self.adapter = adapter
        self.wait = wait
        self.settings = settings  # the run's writes on the shared model (trainers.model_patches)
        self.call: ModelCall | None = None
        self.loss: torch.Tensor | None = None
        self.reference: ReferenceRequest | None = None
        self.generation: GenerateRequest | None = None
        self.loss_batch: Any = None  # the LoraBatch of the run's last gradient call: its backward's

    # ---- the member's thread ---------------------------------------------------------------------
    def model_call(self, model: Any, kwargs: dict[str, Any]) -> Any:
        device = _input_device(kwargs)
        self.call = ModelCall(
            self.adapter, dict(kwargs), torch.is_grad_enabled(), bool(model.training), self.settings,
            rng_state(device),
        )  # fmt: skip
        try:
            self.wait()
            call = self.call
        finally:
            self.call = None
        if call.error is not None:
            raise call.error
        if call.rng_after is not None:  # the dropout masks drawn for this run advanced its stream
            set_rng_state(device, call.rng_after)
        if call.grad:
            self.loss_batch = call.batch
        return call.output

    def backward(self, loss: torch.Tensor) -> None:
        self.loss = loss
        try:
            self.wait()
        finally:
            self.loss = None

    def reference_logps(self, request: ReferenceRequest) -> torch.Tensor:
        self.reference = request
        try:
            self.wait()
        finally:
            self.reference = None
        if request.logps is None:
            raise RuntimeError("the cohort resumed a run without its reference log-probs")
        return request.logps

    def generate(self, kwargs: dict[str, Any], training: bool) -> torch.Tensor:
        """training: the model's mode where the run called (dropout during generation)."""
        device = _input_device(kwargs)
        request = GenerateRequest(self.adapter, dict(kwargs), self.settings, training, rng_state(device))
        self.generation = request
        try:
            self.wait()
        finally:
            self.generation = None
        if request.error is not None:
            raise request.error
        if request.rng_after is not None:  # its sampled tokens (and dropout masks) advanced its stream
            set_rng_state(device, request.rng_after)
        return request.output

    @property
    def waiting_for(self) -> str | None:
        """What the paused run waits for: "call", "reference", "backward", "generate" or None."""
        if self.generation is not None:
            return "generate"
        if self.call is not None:
            return "call"
        if self.reference is not None:
            return "reference"
        if self.loss is not None:
            return "backward"
        return None


def _input_device(kwargs: dict[str, Any]) -> torch.device:
    ids = kwargs.get("input_ids")
    return ids.device if isinstance(ids, torch.Tensor) else torch.device("cpu")


class FusedModel:
    """The model a member's `compute_loss` calls during a fused step: calls go to the cohort,
    every attribute is the real model's."""

    def __init__(self, model: Any, slot: FusedSlot) -> None:
        self.__dict__["_model"] = model
        self.__dict__["_slot"] = slot

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if args:
            raise UnfusableRun("a fused model call passes its inputs by name")
        return self._slot.model_call(self._model, kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._model, name, value)


def scaled_for_backward(accelerator: Any, loss: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """The tensor `accelerator.backward(loss, **kwargs)` would call `.backward()` on.

    Only plain single-process training fuses (`check_fusable_args` refuses the rest), where
    accelerate divides by its gradient-accumulation steps and nothing else."""
    if kwargs:
        raise UnfusableRun(f"accelerator.backward with {sorted(kwargs)} does not fuse")
    return loss / accelerator.gradient_accumulation_steps


def check_fusable_args(trainer_type: str, args: Any) -> None:
    """Raise `UnfusableRun` for training settings a fused step does not reproduce exactly."""
    if trainer_type == "GRPO" and getattr(args, "use_vllm", False):
        raise UnfusableRun("GRPO with vLLM generation (vLLM batches its own requests)")
    if args.fp16:
        raise UnfusableRun("fp16 (a loss scaler per run)")
    if args.optim in ("lomo", "adalomo"):
        raise UnfusableRun(f"optim={args.optim} (steps inside the backward)")
    if getattr(args, "padding_free", False) or getattr(args, "packing", False):
        raise UnfusableRun("padding-free or packed batches (one row holds several sequences)")
    if trainer_type == "DPO" and getattr(args, "ld_alpha", None) is not None:
        raise UnfusableRun("DPO ld_alpha (reference log-probs weighted per token)")
    if trainer_type == "DPO" and getattr(args, "precompute_ref_log_probs", False):
        raise UnfusableRun("DPO precompute_ref_log_probs (the cohort shares reference log-probs itself)")


class FusedStepMixin:
    """Mixed into the engine's TRL trainer classes; inert unless the engine sets a slot."""

    rapidfire_slot: FusedSlot | None = None

    def training_step(self, model, inputs, num_items_in_batch=None):
        slot = self.rapidfire_slot
        if slot is None:
            return super().training_step(model, inputs, num_items_in_batch)
        accelerator = self.accelerator
        restore_precompute = None
        if (
            "completion_mask" in inputs
            and hasattr(self, "precompute_ref_logps")
            and not self.precompute_ref_logps
        ):
            # DPO: the cohort computes the reference log-probs; TRL reads them as precomputed ones.
            inputs = self._prepare_inputs(inputs)
            request = ReferenceRequest(
                inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"]
            )
            chosen, rejected = slot.reference_logps(request).chunk(2, dim=0)
            inputs = {**inputs, "ref_chosen_logps": chosen, "ref_rejected_logps": rejected}
            restore_precompute, self.precompute_ref_logps = self.precompute_ref_logps, True

        def backward(loss, **kwargs):
            slot.backward(scaled_for_backward(accelerator, loss, kwargs))

        accelerator.backward = backward  # an instance attribute: this trainer's accelerator only
        try:
            return super().training_step(FusedModel(model, slot), inputs, num_items_in_batch)
        finally:
            del accelerator.backward
            if restore_precompute is not None:
                self.precompute_ref_logps = restore_precompute


def bind_run_thread(trainer: Any) -> None:
    """Called first in a run's own thread: its calls of the shared `generate` are this trainer's."""
    _RUN_THREAD.trainer = trainer


def install_fused_generate(model: Any) -> None:
    """Make ``model.generate`` hand a call to the cohort when it comes from a run's thread during
    a fused cohort turn; every other call (the engine's own, a run's evaluation while time-sliced,
    the user's) is the model's own `generate`. Idempotent."""
    if getattr(model, "_rapidfire_fused_generate", False):
        return
    own_generate = model.generate

    def generate(*args: Any, **kwargs: Any) -> Any:
        trainer = getattr(_RUN_THREAD, "trainer", None)
        slot = getattr(trainer, "rapidfire_slot", None)
        if slot is None or args:
            return own_generate(*args, **kwargs)
        return slot.generate(kwargs, bool(model.training))

    model.generate = generate
    model._rapidfire_fused_generate = True
