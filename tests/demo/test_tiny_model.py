"""The offline tiny Llama chat model, its tokenizer and the demo-asset cache."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rapidfire_core.demo import data
from rapidfire_core.demo.tiny_model import (
    ROLE_TOKENS,
    build_tiny_chat_model,
    build_tiny_llama,
    create_model,
    demo_assets,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer()


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo-tiny") / "model"
    model, tok = build_tiny_llama(path, seed=0)
    return path, model, tok


def test_tokenizer_special_tokens_and_size(tokenizer):
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token) == (
        "<s>",
        "</s>",
        "<pad>",
        "<unk>",
    )
    assert len({tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}) == 3
    assert 512 <= len(tokenizer) <= 1024
    for role in ROLE_TOKENS:
        assert len(tokenizer(role, add_special_tokens=False)["input_ids"]) == 1


@pytest.mark.parametrize(
    "text",
    [
        data.support_dataset(n=1)[0]["response"],
        "What is 3+4? 7.",
        "Unicode survives: café, naïve, 東京, 🚀\n\ttabs  and  spaces",
        "",
    ],
)
def test_tokenizer_round_trips(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_tokenizer_is_deterministic():
    a, b = train_tokenizer(), train_tokenizer()
    assert a.get_vocab() == b.get_vocab()


def test_chat_template_renders_and_is_prefix_preserving(tokenizer):
    row = data.formatting_function(data.support_dataset(n=1)[0])
    prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
    assert prompt == (
        f"<s><|system|>\n{data.SYSTEM_PROMPT}</s><|user|>\n{row['prompt'][1]['content']}</s><|assistant|>\n"
    )
    assert full == prompt + row["completion"][0]["content"] + "</s>"
    # Token-level prefix: TRL's completion mask starts exactly at the reply.
    p_ids = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True)["input_ids"]
    f_ids = tokenizer.apply_chat_template(row["prompt"] + row["completion"])["input_ids"]
    assert f_ids[: len(p_ids)] == p_ids
    assert tokenizer.decode(f_ids[len(p_ids) :]) == row["completion"][0]["content"] + "</s>"
    assert f_ids.count(tokenizer.bos_token_id) == 1


def test_chat_template_assistant_mask_and_bad_role(tokenizer):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]
    out = tokenizer.apply_chat_template(msgs, return_dict=True, return_assistant_tokens_mask=True)
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(masked) == "Hello!</s>"
    with pytest.raises(Exception, match="Unsupported role"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_trl_accepts_template_including_assistant_only_loss(tokenizer):
    from trl.chat_template_utils import has_generation_markers, is_chat_template_stop_token_trained

    assert has_generation_markers(tokenizer.chat_template)
    assert is_chat_template_stop_token_trained(tokenizer)


def test_build_tiny_llama_loads_with_from_pretrained(saved_tiny):
    path, model, tok = saved_tiny
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (
        64,
        2,
        4,
        2,
    )
    assert cfg.vocab_size == len(tok) and cfg.tie_word_embeddings is False
    loaded = AutoModelForCausalLM.from_pretrained(path)
    tok2 = AutoTokenizer.from_pretrained(path)
    assert tok2.chat_template == tok.chat_template and tok2.get_vocab() == tok.get_vocab()
    assert tok2.pad_token_id == tok.pad_token_id
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)
    ids = tok2("Where is my order #12345?", return_tensors="pt")["input_ids"]
    assert loaded(input_ids=ids).logits.shape == (1, ids.shape[1], len(tok))


def test_build_tiny_llama_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, _ = build_tiny_llama(seed=0)
    after = torch.rand(3)
    b, _ = build_tiny_llama(seed=0)
    c, _ = build_tiny_llama(seed=1, hidden_size=32, num_layers=1)
    assert torch.equal(expected, after)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert c.config.hidden_size == 32 and c.config.num_hidden_layers == 1


def test_create_model_like_the_cookbook(saved_tiny, tmp_path):
    path, _, tok = saved_tiny
    model, tokenizer = create_model(
        {
            "model_name": str(path),
            "model_type": "causal_lm",
            "model_kwargs": {"dtype": "auto", "use_cache": False},
        }
    )
    assert model.config.use_cache is False and tokenizer.pad_token == "<pad>"
    # Without a pad token, create_model falls back to eos.
    tok_nopad = AutoTokenizer.from_pretrained(path)
    tok_nopad.pad_token = None
    tok_nopad.save_pretrained(tmp_path)
    AutoModelForCausalLM.from_pretrained(path).save_pretrained(tmp_path)
    _, tokenizer = create_model({"model_name": str(tmp_path), "model_kwargs": {}})
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"


def test_build_tiny_chat_model_pretrains(tmp_path):
    import json

    path = build_tiny_chat_model(tmp_path / "m", pretrain_steps=8)
    info = json.loads((path / "build_info.json").read_text())
    assert info["pretrain_steps"] == 8 and info["pretrain_loss_last"] < info["pretrain_loss_first"]
    AutoModelForCausalLM.from_pretrained(path)


def test_demo_assets_cache_builds_once_and_repairs(tmp_path):
    first = demo_assets(tmp_path, pretrain_steps=2)
    assert first.built and first.model_path.parent == tmp_path
    again = demo_assets(tmp_path, pretrain_steps=2)
    assert not again.built and again.model_path == first.model_path
    other = demo_assets(tmp_path, pretrain_steps=3)
    assert other.model_path != first.model_path  # the recipe is part of the key
    (first.model_path / "model.safetensors").unlink()  # a broken cache entry is rebuilt
    repaired = demo_assets(tmp_path, pretrain_steps=2)
    assert repaired.built and (repaired.model_path / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [first.version, other.version]
    )  # no temp dirs left


def test_demo_assets_env_var_and_concurrent_builders(tmp_path, monkeypatch):
    monkeypatch.setenv("RAPIDFIRE_CACHE", str(tmp_path))
    results, errors = [], []

    def build():
        try:
            results.append(demo_assets(pretrain_steps=2))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results[0].model_path == results[1].model_path
    assert results[0].model_path.parent == tmp_path / "demo"
    assert [p.name for p in (tmp_path / "demo").iterdir()] == [results[0].version]
    AutoModelForCausalLM.from_pretrained(results[0].model_path)
