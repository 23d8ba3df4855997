"""Offline demo assets: a tiny Llama chat model, generated datasets, reward functions, the demo sweep.

- ``rapidfire_core.demo.data``: ``support_dataset``, ``preference_dataset``, ``math_prompt_dataset``,
  ``formatting_function``
- ``rapidfire_core.demo.rewards``: GRPO reward functions (``answer_reward``, ``format_reward``,
  ``length_penalty``)
- ``rapidfire_core.demo.tiny_model``: ``demo_assets``, ``build_tiny_chat_model``, ``build_tiny_llama``,
  ``create_model``
- ``rapidfire_core.demo.main``: ``run_demo`` (the ``rapidfire demo`` command)

This module stays import-light (no torch/transformers/datasets) so ``rapidfire --help`` is instant.
"""

DEFAULT_MAX_STEPS = 64  # optimizer steps per run in the demo sweep

_LAZY = {
    "run_demo": "rapidfire_core.demo.main",
    "demo_assets": "rapidfire_core.demo.tiny_model",
    "build_tiny_chat_model": "rapidfire_core.demo.tiny_model",
    "build_tiny_llama": "rapidfire_core.demo.tiny_model",
    "create_model": "rapidfire_core.demo.tiny_model",
    "support_dataset": "rapidfire_core.demo.data",
    "preference_dataset": "rapidfire_core.demo.data",
    "math_prompt_dataset": "rapidfire_core.demo.data",
    "formatting_function": "rapidfire_core.demo.data",
}

__all__ = ["DEFAULT_MAX_STEPS", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rapidfire_core.demo' has no attribute {name!r}")
