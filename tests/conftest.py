"""Shared test setup: offline Hugging Face, the `gpu` marker, tiny local models.

Nothing is downloaded: models are tiny Llamas built from a config, tokenizers are trained
locally (rapidfire_core.demo.tiny_model).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
# The dashboard's token file (rapidfire_core.dashboard.token) goes to a fresh folder, not ~.
os.environ["RAPIDFIRE_HOME"] = __import__("tempfile").mkdtemp(prefix="rapidfire-home-")

import pytest  # noqa: E402


def _gpu_usable() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def pytest_collection_modifyitems(config, items):
    if _gpu_usable():
        return
    skip_gpu = pytest.mark.skip(
        reason="needs a CUDA GPU; none is usable on this machine (torch.cuda.is_available() is False)"
    )
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A randomly initialised tiny Llama chat model + tokenizer saved for from_pretrained."""
    from rapidfire_core.demo.tiny_model import build_tiny_llama

    path = tmp_path_factory.mktemp("tiny-llama") / "model"
    build_tiny_llama(path, seed=0)
    return str(path)


@pytest.fixture
def create_tiny_model():
    """The seeds' create_model: from_pretrained on model_config['model_name']."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def create_model(model_config):
        model = AutoModelForCausalLM.from_pretrained(
            model_config["model_name"], **(model_config.get("model_kwargs") or {})
        )
        tokenizer = AutoTokenizer.from_pretrained(model_config["model_name"])
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer

    return create_model
