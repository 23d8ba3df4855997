"""Per-run process state: what a run restores when it gets the turn back."""

import random

import numpy as np
import torch

from rapidfire_core.trainers.process_state import ProcessState


def test_rng_and_tf32_settings_round_trip():
    original = ProcessState.capture()
    try:
        torch.manual_seed(1)
        random.seed(1)
        np.random.seed(1)
        # the new-style TF32 API, as transformers 5 sets it for tf32=True: reading the legacy
        # allow_tf32 flag afterwards raises, so capture must not touch it
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        run_a = ProcessState.capture()
        expected = (torch.rand(3), random.random(), np.random.rand())

        torch.manual_seed(2)  # another run takes its turn and changes everything
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        run_a.restore()
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        got = (torch.rand(3), random.random(), np.random.rand())
        assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]
    finally:
        original.restore()
