"""Each run's segment of a fused batch draws what the run alone would draw (lora.run_streams)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rapidfire_core.lora.run_streams import RunStream, per_run_sampling, stream_dropout

CPU = torch.device("cpu")


def _state(seed: int) -> torch.Tensor:
    return torch.Generator().manual_seed(seed).get_state()


def _alone(seed: int, fn):
    """fn() with the default generator at ``seed``'s state (as a run alone), and the state after."""
    saved = torch.get_rng_state()
    torch.set_rng_state(_state(seed))
    try:
        return fn(), torch.get_rng_state()
    finally:
        torch.set_rng_state(saved)


def test_each_segment_is_dropped_out_as_its_own_peft_layer_would():
    # run A: 2 sequences of 5 tokens, p=0.1; run B: 3 sequences of 3 tokens (right-padded to 5), p=0.3
    k = 6
    x_a, x_b = torch.randn(2, 5, k), torch.randn(3, 3, k)
    x_b_padded = torch.cat([x_b, torch.randn(3, 2, k)], dim=1)  # padding: any values
    fused = torch.cat([x_a, x_b_padded])  # (5, 5, K)
    streams = [RunStream(2, 5, False, _state(1), CPU), RunStream(3, 3, False, _state(2), CPU)]
    before = torch.get_rng_state()
    out = stream_dropout(fused, [10, 15], streams, [0.1, 0.3], key=0, recompute=False)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's own stream is untouched
    want_a, after_a = _alone(1, lambda: F.dropout(x_a, 0.1))
    want_b, after_b = _alone(2, lambda: F.dropout(x_b, 0.3))
    torch.testing.assert_close(out[:2], want_a, rtol=0, atol=0)
    torch.testing.assert_close(out[2:, :3], want_b, rtol=0, atol=0)
    torch.testing.assert_close(out[2:, 3:], x_b_padded[:, 3:], rtol=0, atol=0)  # padding unchanged
    assert torch.equal(streams[0].state, after_a) and torch.equal(streams[1].state, after_b)
    # gradient checkpointing's recompute gets the same masks, drawing nothing
    again = stream_dropout(fused, [10, 15], streams, [0.1, 0.3], key=0, recompute=True)
    torch.testing.assert_close(again, out, rtol=0, atol=0)
    assert torch.equal(streams[0].state, after_a)


def test_left_padded_prompts_draw_over_their_own_width_then_one_position_per_step():
    k = 4
    stream = RunStream(1, 3, True, _state(5), CPU)  # a 3-token prompt in a batch padded to 5
    other = RunStream(1, 5, True, _state(6), CPU)
    prompt = torch.randn(2, 5, k)
    out = stream_dropout(prompt, [5, 5], [stream, other], [0.5, 0.0], key=1, recompute=False)
    want, _ = _alone(5, lambda: F.dropout(prompt[:1, 2:], 0.5))
    torch.testing.assert_close(out[:1, 2:], want, rtol=0, atol=0)
    step = torch.randn(2, 1, k)  # a cached decoding step: one new position for every run
    state = stream.state
    out = stream_dropout(step, [1, 1], [stream, other], [0.5, 0.0], key=1, recompute=False)
    saved = torch.get_rng_state()
    torch.set_rng_state(state)
    want = F.dropout(step[:1], 0.5)
    torch.set_rng_state(saved)
    torch.testing.assert_close(out[:1], want, rtol=0, atol=0)
    assert out[1:].equal(step[1:])  # p = 0: untouched


def test_batched_sampling_draws_each_runs_rows_from_its_own_stream_until_they_end():
    eos = 3
    probs = torch.softmax(torch.randn(5, 8), dim=-1)  # run A: rows 0-1, run B: rows 2-4
    streams = [RunStream(2, 4, True, _state(11), CPU), RunStream(3, 4, True, _state(12), CPU)]
    with per_run_sampling(streams, [eos]):
        first = torch.multinomial(probs, num_samples=1)
    want_a, after_a = _alone(11, lambda: torch.multinomial(probs[:2], num_samples=1))
    want_b, _ = _alone(12, lambda: torch.multinomial(probs[2:], num_samples=1))
    assert torch.equal(first, torch.cat([want_a, want_b]))
    assert torch.equal(streams[0].state, after_a)
    # run A's rows all end (end-of-sequence drawn): its stream draws no more, run B's still does
    a_ends = probs.clone()
    a_ends[:2] = 0.0
    a_ends[:2, eos] = 1.0  # run A's rows draw end-of-sequence
    a_ends[2:, eos] = 0.0  # run B's never do
    with per_run_sampling(streams, [eos]):
        torch.multinomial(a_ends, num_samples=1)
        state_a = streams[0].state.clone()
        state_b = streams[1].state.clone()
        torch.multinomial(probs, num_samples=1)
    assert torch.equal(streams[0].state, state_a)
    assert not torch.equal(streams[1].state, state_b)
    # outside the block torch.multinomial is torch's own
    torch.manual_seed(0)
    plain = torch.multinomial(probs, 1)
    torch.manual_seed(0)
    assert torch.equal(plain, torch.multinomial(probs, 1))
