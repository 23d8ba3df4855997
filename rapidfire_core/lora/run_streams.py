"""Each run's own random stream inside a fused computation: dropout masks and sampled tokens drawn
exactly as the run alone would draw them.

A stock run draws from the process's default generator: PEFT's LoRA dropout draws one mask per
LoRA layer per forward, shaped like the layer's input ``(B_run, T_run, K)``, and sampling draws one
``torch.multinomial`` per generated token over its ``(B_run, V)`` probabilities. A fused step
computes several runs' rows at once, padded to the longest. So that each run still draws what it
would draw alone, each segment of the batch carries a `RunStream`: the RNG state of its run (taken
from the run's thread when it handed its call over, handed back after), its number of sequences
and its own length. Then, per segment, with the run's state made the default generator's
(`RunStream.active`):

    for each LoRA layer with dropout p, in forward order:
        noise = F.dropout(ones(B_run, T_run, K), p)       # the same draw as PEFT's nn.Dropout(x)
        x_run[:, own positions] *= noise                   # padding positions stay as they are
    for each generated token (`per_run_sampling`):
        next_run = torch.multinomial(probs_run, 1)         # skipped once all its rows ended

Gradient checkpointing recomputes layer forwards during the backward; torch restores the default
generator for that, not our streams, so the recompute reuses the masks the forward drew
(`RunStream.noise_log`; the masks autograd holds anyway when not checkpointing).

Own positions: training rows are right-padded (the run's tokens come first, ``T_run`` of them);
generation prompts are left-padded (the run's prompt of width ``P_run`` ends where the batch's
ends), and with the KV cache each later step is one position, the same for every run.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


def rng_state(device: torch.device) -> torch.Tensor:
    """The default generator's state for ``device`` (CPU, or the CUDA device's own)."""
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return torch.get_rng_state()


def set_rng_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


@dataclass
class RunStream:
    """One run's segment of a fused batch: its sequences, its own length, its RNG state.

    sequences: B_run; own_length: T_run (training) or P_run, its prompt width (generation);
    left_padded: True for generation (module docstring); state: the run's default-generator state
    for ``device``, advanced by every draw made for it (``drew`` says whether any was)."""

    sequences: int
    own_length: int
    left_padded: bool
    state: torch.Tensor
    device: torch.device
    drew: bool = False
    noise_log: dict[int, deque] = field(default_factory=dict)  # per module: the forward's masks

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Draws inside the block come from (and advance) this run's stream."""
        saved = rng_state(self.device)
        set_rng_state(self.device, self.state)
        try:
            yield
        finally:
            self.state = rng_state(self.device)
            set_rng_state(self.device, saved)
            self.drew = True

    def own_positions(self, call_length: int, padded_length: int) -> slice:
        """The positions of a call of ``call_length`` that the run alone would have computed, in a
        batch padded to ``padded_length`` (module docstring)."""
        if not self.left_padded:
            return slice(0, min(self.own_length, call_length))
        if call_length >= padded_length:  # the prompt, or every step without the KV cache
            return slice(padded_length - self.own_length, call_length)
        return slice(0, call_length)  # a cached step: its new position(s)


def stream_dropout(
    x: torch.Tensor,
    segment_rows: Sequence[int],
    streams: Sequence[RunStream | None],
    dropouts: Sequence[float],
    key: int,
    recompute: bool,
) -> torch.Tensor:
    """``x`` (..., K) of a fused layer call with each segment's LoRA dropout applied from its run's
    stream (module docstring). dropouts: p per segment (0: that segment's rows pass unchanged);
    key: the layer (masks of a checkpointed forward are kept per layer for the recompute)."""
    features = x.shape[-1]
    x2 = x.reshape(-1, features)  # (M, K)
    padded = max(s.own_length for s in streams if s is not None)
    pieces = []
    parts = torch.split(x2, list(segment_rows))
    for piece, rows, stream, p in zip(parts, segment_rows, streams, dropouts, strict=True):
        if stream is None or p <= 0 or rows == 0:
            pieces.append(piece)
            continue
        length = rows // stream.sequences
        own = stream.own_positions(length, padded)
        if recompute:
            noise = stream.noise_log[key].popleft()
        else:
            with stream.active():  # (B_run, T_run, K): the draw PEFT's nn.Dropout makes
                noise = F.dropout(piece.new_ones((stream.sequences, own.stop - own.start, features)), p)
            if not stream.left_padded:  # a training forward (reentrant checkpointing runs it without grad)
                stream.noise_log.setdefault(key, deque()).append(noise)
        scale = piece.new_ones((stream.sequences, length, features))
        scale[:, own] = noise
        pieces.append((piece.view(stream.sequences, length, features) * scale).view(rows, features))
    return torch.cat(pieces).view(x.shape)


_SAMPLING = threading.local()  # the per-run sampler of a fused generate, in the thread running it


@contextlib.contextmanager
def per_run_sampling(streams: Sequence[RunStream], eos_token_ids: Sequence[int]) -> Iterator[None]:
    """Inside the block, in this thread, a ``torch.multinomial`` over all the streams' rows (one
    generated token of a fused generate) draws each run's rows from its own stream, and no longer
    draws for a run once every one of its rows has sampled an end-of-sequence token (its own
    generate would have stopped). Other threads and other calls are unaffected."""
    rows = [s.sequences for s in streams]
    _SAMPLING.state = (streams, rows, [None] * len(streams), set(int(t) for t in eos_token_ids))
    original = torch.multinomial
    if not getattr(original, "_rapidfire_per_run", False):
        torch.multinomial = _multinomial_factory(original)
    try:
        yield
    finally:
        _SAMPLING.state = None


def _multinomial_factory(original):
    def multinomial(input, num_samples, replacement=False, *, generator=None, out=None):  # noqa: A002
        state = getattr(_SAMPLING, "state", None)
        if state is None or generator is not None or out is not None or input.dim() != 2:
            return original(input, num_samples, replacement, generator=generator, out=out)
        streams, rows, ended, eos = state
        if input.shape[0] != sum(rows):
            return original(input, num_samples, replacement, generator=generator, out=out)
        pieces = []
        for i, (stream, probs) in enumerate(zip(streams, torch.split(input, rows), strict=True)):
            if ended[i] is not None and bool(ended[i].all()):
                pieces.append(probs.new_zeros((probs.shape[0], num_samples), dtype=torch.long))
                continue
            with stream.active():
                drawn = original(probs, num_samples, replacement)
            is_eos = torch.isin(drawn[:, 0], torch.tensor(sorted(eos), device=drawn.device))
            ended[i] = is_eos if ended[i] is None else ended[i] | is_eos
            pieces.append(drawn)
        return torch.cat(pieces)

    multinomial._rapidfire_per_run = True
    return multinomial
