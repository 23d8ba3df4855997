"""A tiny Llama chat model and tokenizer, built offline and deterministically.

The demo, the tests and the benchmarks need a real ``transformers`` causal LM with a
chat template, without a network. This module builds one from scratch:

- a byte-level BPE tokenizer (``tokenizers``) trained on the demo datasets' text,
  wrapped as ``PreTrainedTokenizerFast`` with ``<s> </s> <pad> <unk>``, role tokens
  and a Zephyr-style Jinja chat template (prefix-preserving, with
  ``{% generation %}`` markers so TRL's ``assistant_only_loss`` works too);
- a ``LlamaForCausalLM`` (hidden 64, 2 layers, 4 heads, 2 kv heads by default),
  seeded init;
- for the demo, a short full-parameter "pretraining" on generic in-domain text
  (``data.pretrain_corpus``: support sentences shuffled across intents, never a
  request paired with its reply). Without it, a LoRA on q/v of a random 64-wide
  model barely moves the loss in 30-60 steps; with it the model knows the words
  and a fine-tune only has to learn the chat format and the intent -> reply map.

``demo_assets()`` builds once into ``$RAPIDFIRE_CACHE`` (default
``~/.cache/rapidfire_core/demo``) under a hash of everything that shapes the
weights, into a temp dir that is renamed into place, so concurrent processes are
safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from rapidfire_core.cache import cache_root

from . import data

# Bump when anything that changes the built assets changes (templates, corpus, recipe).
ASSETS_VERSION = "1"

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD, *ROLE_TOKENS)  # ids 0..6 in this order

# Zephyr/TinyLlama-style: "<s><|system|>\n...</s><|user|>\n...</s><|assistant|>\n...</s>".
# The prompt rendered with add_generation_prompt is a token prefix of prompt+completion
# (role markers are special tokens, the byte-level pre-tokenizer splits "\n" from the
# next word), which TRL's prompt-completion masking relies on. The assistant's </s>
# sits inside {% generation %} so assistant_only_loss trains the model to stop.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% elif message['role'] in ['system', 'user'] %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token }}"
    "{% else %}"
    "{{ raise_exception('Unsupported role: ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: list[str] | None = None, vocab_size: int = 768) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` (default: the demo corpus) and wrap it for transformers.

    Byte-level means every string round-trips exactly (no ``<unk>`` in practice).
    """
    texts = data.tokenizer_corpus() if texts is None else list(texts)
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=list(ROLE_TOKENS),
        model_max_length=512,
        padding_side="right",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


# --------------------------------------------------------------------------- model


def tiny_llama_config(
    vocab_size: int,
    tokenizer: PreTrainedTokenizerFast | None = None,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
) -> LlamaConfig:
    ids: dict[str, Any] = {}
    if tokenizer is not None:
        ids = {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        use_cache=True,
        **ids,
    )


def _seeded_model(config: LlamaConfig, seed: int) -> LlamaForCausalLM:
    # fork_rng: seeding must not disturb the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.bos_token_id = config.bos_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    return model


def build_tiny_llama(
    path: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    vocab_texts: list[str] | None = None,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A randomly initialised tiny Llama + chat tokenizer, in memory (no pretraining).

    Fast (well under a second); for tests. With ``path`` both are also saved there
    so ``from_pretrained(path)`` works.
    """
    tokenizer = train_tokenizer(vocab_texts)
    config = tiny_llama_config(len(tokenizer), tokenizer, hidden_size=hidden_size, num_layers=num_layers)
    model = _seeded_model(config, seed)
    if path is not None:
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return model, tokenizer


def _pretrain_batches(tokenizer, texts: list[str], block: int, batch: int, steps: int, seed: int):
    """Pack ``<s> text </s>`` lines into one token stream; yield ``steps`` seeded batches of blocks."""
    ids: list[int] = []
    for enc in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids += [tokenizer.bos_token_id, *enc, tokenizer.eos_token_id]
    stream = torch.tensor(ids)
    n_blocks = len(stream) // block
    blocks = stream[: n_blocks * block].view(n_blocks, block)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield blocks[torch.randint(n_blocks, (batch,), generator=gen)]


def pretrain(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    texts: list[str],
    *,
    steps: int,
    seed: int = 0,
    lr: float = 3e-3,
    batch_size: int = 16,
    block_size: int = 128,
) -> list[float]:
    """Full-parameter next-token training on ``texts``; returns the per-step losses.

    Plain torch loop (no Trainer): AdamW, 10% linear warmup then cosine to 10%.
    """
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item())

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    losses = []
    for x in _pretrain_batches(tokenizer, texts, block_size, batch_size, steps, seed):
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


# Measured on the demo's eval set (LoRA r=32 on q,k,v,o, lr 1e-3, 32 steps, stock TRL):
# no pretraining 6.66 -> 6.52 (a random 64-wide model barely moves); 100 steps 1.88 -> 1.52;
# 200 steps 1.40 -> 0.76; 400 steps 1.54 -> 0.67. 200 steps build in ~12 s on 2 cores.
DEFAULT_PRETRAIN_STEPS = 200


@contextlib.contextmanager
def single_thread():
    """Run torch on one intra-op thread inside the block.

    The tiny model's matmuls are (128, 64) x (64, 64): a second thread buys nothing
    and, on a busy 2-core machine, its spin-waits made pretraining 3-8x slower
    (measured: 50 steps 3.3 s with 1 thread vs 25.8 s with 2 under load 4).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build_tiny_chat_model(
    path: str | os.PathLike,
    *,
    seed: int = 0,
    pretrain_steps: int = DEFAULT_PRETRAIN_STEPS,
    hidden_size: int = 64,
    num_layers: int = 2,
) -> Path:
    """Build tokenizer + tiny Llama, pretrain ``pretrain_steps`` steps, save both to ``path``.

    Writes ``build_info.json`` beside the weights (recipe, pretrain losses, seconds).
    """
    t0 = time.perf_counter()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model, tokenizer = build_tiny_llama(seed=seed, hidden_size=hidden_size, num_layers=num_layers)
    losses: list[float] = []
    if pretrain_steps > 0:
        with torch.random.fork_rng(devices=[]), single_thread():
            torch.manual_seed(seed)
            losses = pretrain(
                model, tokenizer, data.pretrain_corpus(2048, seed), steps=pretrain_steps, seed=seed
            )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    info = {
        "assets_version": ASSETS_VERSION,
        "seed": seed,
        "pretrain_steps": pretrain_steps,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "vocab_size": len(tokenizer),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "pretrain_loss_first": losses[0] if losses else None,
        "pretrain_loss_last": losses[-1] if losses else None,
        "build_seconds": round(time.perf_counter() - t0, 2),
    }
    (path / "build_info.json").write_text(json.dumps(info, indent=2))
    return path


# --------------------------------------------------------------------------- cache


@dataclass(frozen=True)
class DemoAssets:
    """Where the demo model lives; ``model_path`` holds the tokenizer too."""

    model_path: Path
    tokenizer_path: Path
    version: str
    built: bool  # True if this call built it, False if it came from the cache
    info: dict = field(default_factory=dict)


def default_cache_dir() -> Path:
    return cache_root() / "demo"


_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "build_info.json")


def _complete(path: Path) -> bool:
    return all((path / name).is_file() for name in _REQUIRED)


def demo_assets(
    cache_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    pretrain_steps: int = DEFAULT_PRETRAIN_STEPS,
) -> DemoAssets:
    """The pretrained tiny chat model for the demo, built on first use and cached.

    Cache key: a hash of the recipe (``ASSETS_VERSION``, seed, steps, transformers
    major version). Two processes may build at once: each builds into its own temp
    dir and renames it into place; the loser discards its copy.
    """
    import transformers

    recipe = {
        "v": ASSETS_VERSION,
        "seed": seed,
        "pretrain_steps": pretrain_steps,
        "transformers": transformers.__version__.split(".")[0],
    }
    version = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / version
    built = False
    if not _complete(final):
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=root))
        try:
            build_tiny_chat_model(tmp, seed=seed, pretrain_steps=pretrain_steps)
            if final.exists() and not _complete(final):
                # A broken leftover (e.g. copied in by hand): move it aside atomically, then delete.
                trash = Path(tempfile.mkdtemp(prefix=f".{version}-trash-", dir=root))
                with contextlib.suppress(FileNotFoundError):  # another process moved it meanwhile
                    os.rename(final, trash / "old")
                shutil.rmtree(trash, ignore_errors=True)
            try:
                os.rename(tmp, final)  # atomic on one filesystem; fails if final exists (non-empty)
                built = True
            except OSError:
                if not _complete(final):  # neither ours nor a complete one from another process
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    info = json.loads((final / "build_info.json").read_text())
    return DemoAssets(model_path=final, tokenizer_path=final, version=version, built=built, info=info)


# --------------------------------------------------------------------------- create_model


def create_model(model_config: dict) -> tuple[Any, Any]:
    """Load model + tokenizer for one config (the cookbook's ``sample_create_model``).

    Reads ``model_name``, ``model_type`` (only ``causal_lm``), ``model_kwargs`` and
    optional ``tokenizer_kwargs``; sets the pad token to eos when the tokenizer has none.
    """
    model_name = model_config["model_name"]
    model_type = model_config.get("model_type") or "causal_lm"
    model_kwargs = dict(model_config.get("model_kwargs") or {})
    tokenizer_kwargs = dict(model_config.get("tokenizer_kwargs") or {})

    if model_type == "causal_lm":
        model = AutoModelForCausalLM.from_pretrained(model_name, **model_kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_name, **model_kwargs)

    tokenizer = AutoTokenizer.from_pretrained(model_name, **tokenizer_kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
