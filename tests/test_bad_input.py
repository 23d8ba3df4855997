"""Bad input is refused by run_fit before any model is loaded (create_model is never called), with
an error that names the field, the function or the row; experiment names stay inside the root."""

from __future__ import annotations

import pytest
from datasets import Dataset

from rapidfire_core import Experiment
from rapidfire_core.automl import RFGridSearch, RFLoraConfig, RFModelConfig, RFSFTConfig
from rapidfire_core.demo.data import formatting_function, support_dataset
from rapidfire_core.errors import ConfigError


def _config(model_dir, lora=None, **train):
    args = dict(
        learning_rate=1e-3, max_steps=2, per_device_train_batch_size=2, logging_steps=1, max_length=64
    )
    args.update(train)
    return RFModelConfig(model_name=model_dir, peft_config=RFLoraConfig(**(lora or {"r": 4})),
                         training_args=RFSFTConfig(**args), formatting_func=formatting_function)  # fmt: skip


@pytest.fixture
def counted(create_tiny_model):
    calls = []

    def create_model(model_config):
        calls.append(model_config["model_name"])
        return create_tiny_model(model_config)

    create_model.calls = calls
    return create_model


def _refused(tmp_path, counted, config, train, error, match, **fit):
    exp = Experiment("bad", experiment_path=tmp_path, verbose=False)
    with pytest.raises(error, match=match):
        exp.run_fit(RFGridSearch(config, trainer_type="SFT"), counted, train, **fit)
    assert counted.calls == [] and exp.get_runs_info().empty  # nothing loaded, nothing registered
    exp.end()


@pytest.mark.parametrize(
    ("lora", "train", "match"),
    [
        ({"r": 0}, {}, r"configs\[0\]\.peft_config\.r: RFLoraConfig\.r must be an integer >= 1 .*got 0"),
        ({"r": -1}, {}, r"configs\[0\]\.peft_config\.r: .*got -1"),
        ({"r": 4, "lora_dropout": 2}, {}, r"configs\[0\]\.peft_config\.lora_dropout: .*\[0, 1\), got 2"),
        (None, {"per_device_train_batch_size": 0},
         r"configs\[0\]\.training_args\.per_device_train_batch_size: .*>= 1, got 0"),
        (None, {"learning_rate": -1}, r"configs\[0\]\.training_args\.learning_rate: .*>= 0 .*got -1"),
    ],
)  # fmt: skip
def test_bad_config_values(tmp_path, tiny_model_dir, counted, lora, train, match):
    _refused(
        tmp_path, counted, _config(tiny_model_dir, lora, **train), support_dataset(8), ConfigError, match
    )


@pytest.mark.parametrize(
    ("fit", "match"),
    [
        ({"seed": "x"}, r"seed \(the chunk order's seed\) must be an integer in \[0, 2\*\*32\), got 'x'"),
        ({"seed": -3}, r"seed .* got -3"),
        ({"num_chunks": True}, r"num_chunks must be a positive integer, got True"),
        ({"num_shards": True}, r"num_chunks must be a positive integer, got True"),
    ],
)
def test_bad_run_fit_arguments(tmp_path, tiny_model_dir, counted, fit, match):
    _refused(tmp_path, counted, _config(tiny_model_dir), support_dataset(8), ValueError, match, **fit)


def bad_types(row):
    return {"prompt": 123, "completion": None}


def fails_late(row):
    if row["intent"] == "track_order":
        raise KeyError("order_id")
    return formatting_function(row)


def none_completion_late(row):
    out = formatting_function(row)
    if row["intent"] == "track_order":
        out["completion"] = None
    return out


def switches_to_text(row):
    if row["intent"] == "track_order":
        return {"prompt": row["instruction"], "completion": row["response"]}
    return formatting_function(row)


def _first(rows: Dataset, intent: str) -> int:
    return rows["intent"].index(intent)


def test_formatting_functions_are_checked_on_every_row(tmp_path, tiny_model_dir, counted):
    rows = support_dataset(16)
    late = _first(rows, "track_order")
    assert late > 0
    cases = [
        (bad_types, r"formatting_func 'bad_types' on train_dataset, row 0: 'prompt' must be a string or a "
                    r"non-empty list of chat messages .*got int 123"),
        (fails_late, rf"formatting_func 'fails_late' failed on row {late} of train_dataset: KeyError: 'order_id'"),
        (none_completion_late, rf"row {late}: 'completion' must be .*got NoneType None"),
        (switches_to_text, rf"row {late}: \['completion', 'prompt'\] hold strings but row 0 holds chat messages"),
    ]  # fmt: skip
    for func, match in cases:
        config = _config(tiny_model_dir)
        config.formatting_func = func
        _refused(tmp_path, counted, config, rows, ValueError, match)


def test_raw_rows_are_checked_too_and_the_eval_set_is_named(tmp_path, tiny_model_dir, counted):
    config = _config(tiny_model_dir)
    config.formatting_func = None
    texts = [{"text": "a b c"}, {"text": "d e"}, {"text": None}, {"text": "f"}]
    _refused(
        tmp_path, counted, config, texts, ValueError, r"train_dataset, row 2: 'text' must be .*got NoneType"
    )
    mixed = [{"prompt": "hi", "completion": [{"role": "assistant", "content": "hello"}]}] * 4
    _refused(tmp_path, counted, config, mixed, ValueError,
             r"train_dataset, row 0: 'prompt' is a string, 'completion' is a message list")  # fmt: skip
    exp = Experiment("bad-eval", experiment_path=tmp_path, verbose=False)
    group = RFGridSearch(config, trainer_type="SFT")
    with pytest.raises(ValueError, match=r"eval_dataset, row 1: 'text' must be .*got NoneType None"):
        exp.run_fit(group, counted, texts[:2], [{"text": "ok"}, {"text": None}], num_chunks=1)
    with pytest.raises(ValueError, match=r"eval_dataset: these rows cannot be one dataset \(Arrow"):
        exp.run_fit(group, counted, texts[:2], [{"text": "ok"}, {"text": 5}], num_chunks=1)
    assert counted.calls == []
    exp.end()


def test_create_model_returning_tokenizer_then_model_is_refused_before_any_run(
    tmp_path, tiny_model_dir, counted
):
    from rapidfire_core.trainers.shared_models import CreateModelContractError

    def swapped(model_config):
        model, tokenizer = counted(model_config)
        return tokenizer, model

    exp = Experiment("swapped", experiment_path=tmp_path, verbose=False)
    with pytest.raises(
        CreateModelContractError,
        match=r"must return \(model, tokenizer\), got \(tokenizer, model\) "
        r"\(\w+, LlamaForCausalLM\): swap them",
    ):
        exp.run_fit(RFGridSearch(_config(tiny_model_dir), trainer_type="SFT"), swapped, support_dataset(8))
    assert len(counted.calls) == 1 and exp.get_runs_info().empty
    with pytest.raises(CreateModelContractError, match=r"must return \(model, tokenizer\), got dict"):
        exp.run_fit(
            RFGridSearch(_config(tiny_model_dir), trainer_type="SFT"), lambda mc: {}, support_dataset(8)
        )
    exp.end()


@pytest.mark.parametrize(
    "name",
    ["../escaped", "/abs/path", "..", ".", "a/b", "a\\b", "x\0y", "tab\there", "CON", "nul.txt", "Lpt1",
     ".hidden", " padded", "padded ", "trailing.", "x" * 256, "é" * 128],
)  # fmt: skip
def test_experiment_names_must_be_one_folder_in_the_root(tmp_path, name):
    root = tmp_path / "root" / "experiments"
    root.mkdir(parents=True)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match=r"invalid experiment_name"):
        Experiment(name, experiment_path=root, verbose=False)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing made anywhere


def test_unicode_and_spaces_keep_working_where_a_path_does_not(tmp_path):
    for name in ("sft sweep 2", "réglage fin — 実験", "lr=1e-3,r:8"):
        exp = Experiment(name, experiment_path=tmp_path, verbose=False)
        assert exp.path == (tmp_path / name).resolve() and (exp.path / "runs.db").is_file()
        exp.end()
    for name in ("sweep/2", "../sweep 2", "  "):
        with pytest.raises(ValueError, match="experiment_name"):
            Experiment(name, experiment_path=tmp_path / "inner", verbose=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr=1e-3,r:8", "réglage fin — 実験", "sft sweep 2"]


def test_an_invalid_config_fails_alone_before_training_and_strict_refuses_all(
    tmp_path, tiny_model_dir, counted, capsys
):
    from rapidfire_core.automl import List

    configs = List([_config(tiny_model_dir), _config(tiny_model_dir, learning_rate=-1.0)])
    exp = Experiment("one-bad", experiment_path=tmp_path)
    with pytest.raises(ConfigError, match=r"1 of 2 runs invalid:\n  run 2 \{train.learning_rate=-1.0\}"):
        exp.run_fit(RFGridSearch(configs, trainer_type="SFT"), counted, support_dataset(8), strict=True)
    assert counted.calls == [] and exp.get_runs_info().empty
    capsys.readouterr()

    handle = exp.run_fit(
        RFGridSearch(configs, trainer_type="SFT"), counted, support_dataset(8), background=True
    )
    info = exp.get_runs_info()  # every run is there the moment run_fit returns
    assert info["run_id"].tolist() == [1, 2] and info["status"].tolist()[1] == "FAILED"
    assert info["status"].tolist()[0] in ("NEW", "ONGOING", "COMPLETED")
    assert "configs[1].training_args.learning_rate" in info["error"].tolist()[1]
    handle.wait()
    out = capsys.readouterr().out
    failed = out.index("run 2 FAILED: ConfigError: configs[1].training_args.learning_rate")
    assert failed < out.index("chunk 1/4] run 1")  # shown before training starts
    assert exp.get_runs_info()["status"].tolist() == ["COMPLETED", "FAILED"]
    exp.end()
    with pytest.raises(ConfigError, match="2 of 2 runs invalid"):  # nothing to train: refused
        bad = List([_config(tiny_model_dir, learning_rate=-1.0), _config(tiny_model_dir, max_steps=-3)])
        Experiment("all-bad", experiment_path=tmp_path, verbose=False).run_fit(
            RFGridSearch(bad, trainer_type="SFT"), counted, support_dataset(8)
        )
