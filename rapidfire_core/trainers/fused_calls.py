"""One forward for the model calls of several runs: concatenate, run once, hand back slices.

In a fused cohort step each run's TRL code calls the shared model as it would alone
(`trainers.fused_step` intercepts the call). The calls that can share a forward are those with
the same non-tensor arguments (``fused_lm_head=True``, ``use_cache=False``, ...); their
per-sequence tensors are concatenated along the batch, right-padded to the longest sequence::

    run_1: input_ids (2, 40), attention_mask (2, 40), labels (2, 40)
    run_2: input_ids (4, 64), ...                      -> one call on (6, 64), rows [0:2] run_1's

Right padding with ``attention_mask = 0`` and ``labels = -100`` leaves every real position of a
causal model unchanged, so each run's slice of the output (rows of its sequences, the first
``T_run`` positions) is what its own call would have returned, up to fp32 summation order.
The rows are split among the runs' adapters with a `LoraBatch` (`lora.peft_segments`); each run's
rows draw their dropout masks (and, in a batched generate, their sampled tokens) from the run's own
RNG stream, handed over with its call and back with its output (`lora.run_streams`).

Batch-reduced output fields are recomputed per run: TRL's fused LM head returns
``loss = -sum(log_probs) / num_items``, so each run's ``loss`` is rebuilt from its own slice.
A call this module cannot split exactly (labels without the fused head, where the model would
reduce the loss over every run's rows; tensors of other shapes) runs alone, still in the step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rapidfire_core.lora.context import LoraBatch, backward_batch, lora_batch
from rapidfire_core.lora.peft_segments import segment_forward
from rapidfire_core.lora.run_streams import RunStream, per_run_sampling
from rapidfire_core.trainers.model_patches import RunModelSettings

# Right-padding values by argument name (anything else pads with 0).
_PAD_VALUES = {"labels": -100, "attention_mask": 0}


@dataclass
class ModelCall:
    """One run's call of the shared model, made in its own thread and run by the cohort."""

    adapter: str | None  # the run's adapter, or None for a reference (adapters off) call
    kwargs: dict[str, Any]
    grad: bool  # torch.is_grad_enabled() where the run called
    training: bool = True  # the model's mode when the run called (dropout, checkpointing)
    settings: RunModelSettings | None = None  # the run's writes on the model (forward wrapper, ...)
    rng_state: torch.Tensor | None = None  # the run's RNG state when it called: its dropout's stream
    rng_after: torch.Tensor | None = None  # that state after the call drew its masks (None: no draw)
    output: Any = None
    error: BaseException | None = None
    batch: LoraBatch | None = None  # the segment layout the call ran in (its backward needs it)
    rows: int = field(init=False)
    length: int = field(init=False)

    def __post_init__(self) -> None:
        ids = self.kwargs.get("input_ids")
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            raise ValueError("a fused model call needs input_ids of shape (batch, seq)")
        self.rows, self.length = int(ids.shape[0]), int(ids.shape[1])

    def fusion_key(self) -> tuple | None:
        """Calls with equal keys share a forward; None: this call runs alone."""
        if "labels" in self.kwargs and not self.kwargs.get("fused_lm_head"):
            return None  # the model would reduce its loss over every run's rows
        if "num_items_in_batch" in self.kwargs and not self.kwargs.get("fused_lm_head"):
            return None
        scalars = []
        for name, value in sorted(self.kwargs.items()):
            if isinstance(value, torch.Tensor):
                if value.dim() == 0 or value.shape[0] != self.rows or value.dim() > 2:
                    if name == "num_items_in_batch":
                        continue  # only the loss reads it: rebuilt per run
                    return None
                if value.dim() == 2 and value.shape[1] != self.length:
                    return None
                scalars.append((name, value.dim(), value.dtype, value.device))
            elif name != "num_items_in_batch":
                scalars.append((name, repr(value)))
        settings = self.settings.key() if self.settings is not None else None
        return (self.grad, self.training, settings, tuple(scalars))


def _pad_to(t: torch.Tensor, length: int, value: int | float) -> torch.Tensor:
    if t.dim() < 2 or t.shape[1] == length:
        return t
    pad = t.new_full((t.shape[0], length - t.shape[1]), value)
    return torch.cat([t, pad], dim=1)


def _slice_output(output: Any, start: int, call: ModelCall, full_length: int) -> Any:
    """The rows and positions of ``call`` in a fused output (a transformers ModelOutput)."""
    stop = start + call.rows
    trim = full_length - call.length
    fields = {}
    for name, value in output.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == output_rows(output):
            piece = value[start:stop]
            if piece.dim() >= 2 and trim:
                piece = piece[:, : piece.shape[1] - trim]
            fields[name] = piece
        elif isinstance(value, tuple) and value and all(isinstance(v, torch.Tensor) for v in value):
            fields[name] = tuple(v[start:stop] for v in value)  # hidden states, attentions
        else:
            fields[name] = None  # batch-reduced: rebuilt below where this module knows how
    out = type(output)(**fields)
    if "loss" in output and output.get("loss") is not None and out.get("log_probs") is not None:
        num_items = call.kwargs.get("num_items_in_batch")
        denominator = out["label_mask"].sum().clamp(min=1) if num_items is None else num_items
        out["loss"] = -out["log_probs"].sum() / denominator  # TRL's fused-head loss, for this run
    return out


def output_rows(output: Any) -> int:
    for name in ("log_probs", "logits", "last_hidden_state"):
        value = output.get(name)
        if isinstance(value, torch.Tensor):
            return int(value.shape[0])
    raise ValueError(f"cannot tell the batch size of a {type(output).__name__}")


def _forward(model, calls: Sequence[ModelCall]) -> None:
    """Run ``calls`` as one forward of ``model`` (they share a fusion key, or there is one)."""
    length = max(call.length for call in calls)
    kwargs: dict[str, Any] = {}
    for name, value in calls[0].kwargs.items():
        if isinstance(value, torch.Tensor) and name != "num_items_in_batch":
            pad = _PAD_VALUES.get(name, 0)
            kwargs[name] = torch.cat([_pad_to(c.kwargs[name], length, pad) for c in calls])
        elif name != "num_items_in_batch" or len(calls) == 1:
            kwargs[name] = value
    if "attention_mask" not in kwargs and any(c.length < length for c in calls):
        # A run whose batch had no padding passes no mask: the padding added here needs one.
        device = kwargs["input_ids"].device
        kwargs["attention_mask"] = torch.cat(
            [_pad_to(torch.ones(c.rows, c.length, dtype=torch.long, device=device), length, 0) for c in calls]
        )
    segments = [(c.adapter, c.rows * length) for c in calls]
    device = kwargs["input_ids"].device
    streams = _streams(calls, device, [(c.rows, c.length) for c in calls], left_padded=False)
    batch = LoraBatch(segments, device, streams=streams)
    if calls[0].settings is not None:
        calls[0].settings.apply()  # the calls' forward wrapper (their fusion keys agree on it)
    if model.training != calls[0].training:
        model.train(calls[0].training)  # a sibling's evaluation may have left it in eval mode
    with torch.set_grad_enabled(calls[0].grad), segment_forward(model), lora_batch(batch):
        output = model(**kwargs)
    start = 0
    for call, stream in zip(calls, streams or [None] * len(calls), strict=True):
        call.output = output if len(calls) == 1 else _slice_output(output, start, call, length)
        call.batch = batch
        call.rng_after = stream.state if stream is not None and stream.drew else None
        start += call.rows


def _streams(requests: Sequence[Any], device: torch.device, shapes, left_padded: bool) -> list | None:
    """Each request's `RunStream` (its RNG state, sequences and own length), or None when none
    carries a state (the engine's own calls: no dropout is drawn per run)."""
    if all(r.rng_state is None for r in requests):
        return None
    return [
        RunStream(rows, length, left_padded, r.rng_state, device) if r.rng_state is not None else None
        for r, (rows, length) in zip(requests, shapes, strict=True)
    ]


def run_model_calls(model, calls: Sequence[ModelCall]) -> int:
    """Set ``output`` (or ``error``) of every call: one forward per group of fusable calls.
    Returns the number of forwards that fused two or more calls.

    An error of a group's forward is the error of every call in it (each run fails with it);
    the other groups still run."""
    groups: dict[Any, list[ModelCall]] = {}
    for index, call in enumerate(calls):
        key = call.fusion_key()
        groups.setdefault(key if key is not None else ("alone", index), []).append(call)
    for group in groups.values():
        try:
            _forward(model, group)
        except Exception as exc:  # noqa: BLE001 - the runs that made these calls fail with it
            for call in group:
                call.error = exc
    return sum(len(group) > 1 for group in groups.values())


def run_backward(model, losses: Sequence[torch.Tensor], batches: Sequence[LoraBatch]) -> None:
    """One backward of ``losses``, each from a forward in ``batches[i]``: one autograd pass per
    distinct batch (one in a fused step), inside it, so gradient checkpointing's recomputed
    layer forwards use the same segments."""
    by_batch: dict[int, tuple[LoraBatch, list[torch.Tensor]]] = {}
    for loss, batch in zip(losses, batches, strict=True):
        by_batch.setdefault(id(batch), (batch, []))[1].append(loss)
    for batch, group in by_batch.values():
        with segment_forward(model), backward_batch(batch):
            torch.autograd.backward(group)


def _left_pad(t: torch.Tensor, length: int, value: int) -> torch.Tensor:
    if t.shape[1] == length:
        return t
    return torch.cat([t.new_full((t.shape[0], length - t.shape[1]), value), t], dim=1)


def _generation_key(request: Any) -> tuple:
    config = request.kwargs.get("generation_config")
    names = tuple(sorted(request.kwargs))
    settings = request.settings.key() if request.settings is not None else None
    return (names, config.to_json_string() if config is not None else None, settings, request.training)


def run_generations(model, requests: Sequence[Any]) -> int:
    """Set ``output`` (or ``error``) of every `GenerateRequest`: one batched `model.generate` per
    group of requests with the same generation settings, each row through its run's adapter.
    Returns the number of generates that batched two or more requests.

    Prompts are left-padded (generation continues from the right end); the batch is re-padded
    on the left to its longest prompt, which leaves each row's completion unchanged (positions
    follow the attention mask). Each run gets its rows with its own prompt width; rows that
    finished early carry the pad token after their end of sequence, as in its own batch."""
    groups: dict[tuple, list[Any]] = {}
    for request in requests:
        groups.setdefault(_generation_key(request), []).append(request)
    for group in groups.values():
        try:
            _generate(model, group)
        except Exception as exc:  # noqa: BLE001 - the runs that asked fail with it
            for request in group:
                request.error = exc
    return sum(len(group) > 1 for group in groups.values())


def _generate(model, requests: Sequence[Any]) -> None:
    if requests[0].settings is not None:
        requests[0].settings.apply()  # use_cache and the forward of the group (equal keys)
    first = requests[0].kwargs
    config = first.get("generation_config")
    pad = getattr(config, "pad_token_id", None)
    pad = 0 if pad is None else int(pad[0] if isinstance(pad, (list, tuple)) else pad)
    width = max(int(r.kwargs["input_ids"].shape[1]) for r in requests)
    kwargs = dict(first)
    kwargs["input_ids"] = torch.cat([_left_pad(r.kwargs["input_ids"], width, pad) for r in requests])
    masks = []
    for r in requests:
        ids = r.kwargs["input_ids"]
        mask = r.kwargs.get("attention_mask", torch.ones_like(ids))
        masks.append(_left_pad(mask, width, 0))
    kwargs["attention_mask"] = torch.cat(masks)
    for name, value in first.items():
        if isinstance(value, torch.Tensor) and name not in ("input_ids", "attention_mask"):
            raise ValueError(f"a fused generate does not batch the tensor argument {name!r}")
    segments = [(r.adapter, int(r.kwargs["input_ids"].shape[0])) for r in requests]
    device = kwargs["input_ids"].device
    shapes = [tuple(r.kwargs["input_ids"].shape) for r in requests]  # (B_run, P_run)
    streams = _streams(requests, device, shapes, left_padded=True)
    batch = LoraBatch(segments, device, per_sequence=True, streams=streams)
    if model.training != requests[0].training:
        model.train(requests[0].training)  # as the run generates: TRL's GRPO does in training mode
    sampling = contextlib.nullcontext() if streams is None else per_run_sampling(streams, _eos_ids(config))
    with torch.no_grad(), segment_forward(model), lora_batch(batch), sampling:
        output = model.generate(**kwargs)
    start = 0
    for i, (r, (_, rows)) in enumerate(zip(requests, segments, strict=True)):
        r.output = output[start : start + rows, width - int(r.kwargs["input_ids"].shape[1]) :]
        r.rng_after = streams[i].state if streams is not None and streams[i].drew else None
        start += rows


def _eos_ids(config: Any) -> list[int]:
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        return []
    return [int(t) for t in (eos if isinstance(eos, (list, tuple)) else [eos])]
