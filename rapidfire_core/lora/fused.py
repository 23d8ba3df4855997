"""Many LoRA adapters in one forward and backward, from your own training loop.

One optimizer step of N adapters on one frozen base model::

    packed = pack_adapter_batches({"r4": ids_a, "r8": ids_b}, pad_token_id=0)  # ids_*: (n_i, T_i)
    with fused_adapters(model, packed.lora):
        logits = model(input_ids=packed.input_ids, attention_mask=packed.attention_mask).logits
        losses = per_adapter_losses(logits, packed.labels, packed.lora)  # {"r4": (), "r8": ()}
        sum(losses.values()).backward()
    for optimizer in optimizers.values():  # one per adapter, over its own parameters
        optimizer.step()
        optimizer.zero_grad()

``model`` is a Hugging Face model with adapters added by `inject_multi_lora` (`MultiLoraLinear`
layers), or a PEFT model holding several named LoRA adapters (``get_peft_model`` then
``add_adapter``). PEFT's own ``adapter_names=`` (mixed-adapter batches) is refused in training
mode; `fused_adapters` trains them instead: it runs each PEFT LoRA Linear's adapters per row
segment (`lora.peft_segments`) and marks the batch's adapters trainable for the block.

Why one backward of the sum is exact: the adapters share no parameter and a sequence's
activations go through its own adapter only (the base is frozen), so the gradient of
``sum(losses)`` with respect to adapter a's weights is the gradient of ``losses[a]`` alone: each
adapter gets what a separate run on its own sequences would give it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .context import LoraBatch, backward_batch
from .inject import lora_adapter_sets

IGNORE_INDEX = -100  # the label of a token that is not trained (Hugging Face's convention)


@dataclass(frozen=True)
class PackedBatch:
    """Every adapter's sequences as one model input (B sequences of T tokens).

    input_ids: (B, T) int64, adapter by adapter in the order given, each sequence right-padded
    to T, the longest one. attention_mask: (B, T), 1 on tokens, 0 on padding. labels: (B, T),
    the given labels (default: input_ids), IGNORE_INDEX on padding. lora: the `LoraBatch` with
    one per-sequence segment per adapter, ``[(name, n_name), ...]``. sequences: each adapter's
    rows of the batch dimension.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    lora: LoraBatch
    sequences: dict[str, slice]


def _as_fields(name: str, value: torch.Tensor | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    fields = {"input_ids": value} if isinstance(value, torch.Tensor) else dict(value)
    if "input_ids" not in fields:
        raise ValueError(f"adapter {name!r}: a batch is input_ids (n, T) or a dict with 'input_ids'")
    ids = fields["input_ids"]
    if ids.dim() != 2 or ids.shape[0] == 0:
        raise ValueError(f"adapter {name!r}: input_ids must be (sequences, tokens), got {tuple(ids.shape)}")
    mask = fields.setdefault("attention_mask", torch.ones_like(ids))
    labels = fields.setdefault("labels", ids.masked_fill(mask == 0, IGNORE_INDEX))
    for key, t in (("attention_mask", mask), ("labels", labels)):
        if t.shape != ids.shape:
            raise ValueError(f"adapter {name!r}: {key} {tuple(t.shape)} != input_ids {tuple(ids.shape)}")
    return fields


def pack_adapter_batches(
    batches: Mapping[str, torch.Tensor | Mapping[str, torch.Tensor]],
    pad_token_id: int,
    device: torch.device | str | None = None,
) -> PackedBatch:
    """Concatenate each adapter's batch along the sequence axis, padding every sequence on the
    right to the longest length T (so adapters may bring different numbers of sequences of
    different lengths); returns the model input and its per-sequence `LoraBatch`.

    batches: ``{adapter name: input_ids (n, T_i)}`` or ``{name: {"input_ids": (n, T_i),
    "attention_mask": (n, T_i), "labels": (n, T_i)}}`` (mask and labels optional). Right padding
    leaves a causal LM's outputs on real tokens as they are without the padding.
    device: where the result lives (default: the first input_ids' device).
    """
    if not batches:
        raise ValueError("pack_adapter_batches needs at least one adapter's batch")
    fields = {name: _as_fields(name, value) for name, value in batches.items()}
    length = max(f["input_ids"].shape[1] for f in fields.values())
    device = torch.device(device) if device is not None else next(iter(fields.values()))["input_ids"].device
    pads = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    columns: dict[str, list[torch.Tensor]] = {key: [] for key in pads}
    sequences, start = {}, 0
    for name, f in fields.items():
        missing = length - f["input_ids"].shape[1]
        for key, pad in pads.items():
            columns[key].append(F.pad(f[key].to(device=device, dtype=torch.long), (0, missing), value=pad))
        count = f["input_ids"].shape[0]
        sequences[name] = slice(start, start + count)
        start += count
    lora = LoraBatch([(name, s.stop - s.start) for name, s in sequences.items()], device, per_sequence=True)
    return PackedBatch(
        input_ids=torch.cat(columns["input_ids"]),
        attention_mask=torch.cat(columns["attention_mask"]),
        labels=torch.cat(columns["labels"]),
        lora=lora,
        sequences=sequences,
    )


def _sequence_segments(batch: LoraBatch, num_sequences: int, length: int) -> list[tuple[str | None, int]]:
    """``[(adapter, sequences), ...]`` of ``batch`` over ``num_sequences`` sequences of ``length``."""
    if batch.per_sequence:
        counts = list(batch.segment_rows)
    else:  # segments count rows = tokens: whole sequences each
        if any(rows % length for rows in batch.segment_rows):
            raise ValueError(f"segments of {batch!r} do not cut whole sequences of {length} tokens")
        counts = [rows // length for rows in batch.segment_rows]
    if sum(counts) != num_sequences:
        raise ValueError(f"{batch!r} describes {sum(counts)} sequences, the logits hold {num_sequences}")
    return list(zip(batch.segment_adapters, counts, strict=True))


def per_adapter_losses(
    logits: torch.Tensor, labels: torch.Tensor, batch: LoraBatch
) -> dict[str, torch.Tensor]:
    """Each adapter's causal-LM loss over its own sequences: ``{name: scalar}``.

    logits: (B, T, V), the model's output for the packed input; labels: (B, T), IGNORE_INDEX
    where no token is trained; batch: the `LoraBatch` of the forward (per-sequence, as
    `pack_adapter_batches` makes, or per-row with whole sequences per segment). Token t
    predicts label t+1; the loss is the mean cross entropy (in fp32) over the adapter's labelled
    tokens, what a Hugging Face causal LM returns for ``labels=`` on that adapter's batch alone.
    An adapter with no labelled token gets a zero that still carries the graph.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"logits (B, T, V) and labels (B, T) expected, got {tuple(logits.shape)}, {tuple(labels.shape)}"
        )
    shifted = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]  # (B, T): the label each position predicts
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    start = 0
    for name, count in _sequence_segments(batch, logits.shape[0], logits.shape[1]):
        rows = slice(start, start + count)
        start += count
        if name is None or count == 0:
            continue
        target = shifted[rows].reshape(-1)
        loss_sum = F.cross_entropy(
            logits[rows].float().reshape(-1, logits.shape[-1]),
            target,
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        sums[name] = sums[name] + loss_sum if name in sums else loss_sum
        counts[name] = counts.get(name, 0) + int((target != IGNORE_INDEX).sum())
    return {name: sums[name] / max(counts[name], 1) for name in sums}


def _peft_adapters(model: nn.Module) -> set[str] | None:
    """The LoRA adapter names of a PEFT model, None for a model that is not one."""
    config = getattr(model, "peft_config", None)
    return set(config) if isinstance(config, Mapping) and config else None


def _peft_adapter_params(model: nn.Module, names: set[str]) -> list[nn.Parameter]:
    out = []
    for name, p in model.named_parameters():
        parts = name.split(".")
        if ("lora_A" in parts or "lora_B" in parts) and names.intersection(parts):
            out.append(p)
    return out


@contextlib.contextmanager
def fused_adapters(model: nn.Module, batch: LoraBatch) -> Iterator[LoraBatch]:
    """Run the forward AND backward of ``batch`` inside this block: each segment's rows go
    through its adapter, in one pass over the shared base.

    model: an `inject_multi_lora` model, or a PEFT model with several LoRA adapters. For PEFT,
    every LoRA Linear computes per segment for the block (PEFT's own forward resumes after it)
    and the batch's adapters have ``requires_grad=True`` during the block (PEFT trains only
    its active adapter; the flags are put back at the end). Adapters PEFT computes in a way
    the segment math does not (DoRA, modules_to_save, LoRA on embeddings) raise
    `lora.peft_segments.UnfusableAdapter`; an adapter name the model lacks raises ValueError.
    The batch stays active for the backward, including layer forwards that gradient
    checkpointing re-runs on autograd's threads; one such block at a time per process.
    """
    peft_names = _peft_adapters(model)
    known = peft_names if peft_names is not None else {n for s in lora_adapter_sets(model) for n in s}
    unknown = sorted(set(batch.adapters) - known)
    if unknown:
        raise ValueError(f"the batch names adapters the model does not have: {unknown} (has {sorted(known)})")
    with contextlib.ExitStack() as stack:
        if peft_names is not None:
            from .peft_segments import check_fusable, segment_forward

            for name in batch.adapters:
                check_fusable(model, name)
            params = _peft_adapter_params(model, set(batch.adapters))
            flags = [p.requires_grad for p in params]
            stack.callback(lambda: [p.requires_grad_(f) for p, f in zip(params, flags, strict=True)])
            for p in params:
                p.requires_grad_(True)
            stack.enter_context(segment_forward(model))
        yield stack.enter_context(backward_batch(batch))
