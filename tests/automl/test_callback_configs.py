"""`callbacks` on RFModelConfig and the RF training configs: accepted, expandable like any knob,
kept out of TRL's config, checked before training."""

from __future__ import annotations

import threading
import warnings

import pytest
from transformers import TrainerCallback

from rapidfire_core.automl import List, RFGridSearch, RFLoraConfig, RFModelConfig, RFSFTConfig
from rapidfire_core.automl.translate import assume_gpu
from rapidfire_core.automl.typecheck import describe, matches
from rapidfire_core.errors import ConfigError, ConfigTranslationWarning

MODEL = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"


class Count(TrainerCallback):
    def __init__(self, limit: int = 3) -> None:
        self.limit = limit


class Log(TrainerCallback):
    pass


class NeedsArgs(TrainerCallback):
    def __init__(self, sink) -> None:
        self.sink = sink


class HoldsALock(TrainerCallback):
    def __init__(self) -> None:
        self.lock = threading.Lock()


@pytest.fixture(autouse=True)
def _no_gpu():
    with assume_gpu(False), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _config(model_callbacks=None, **train):
    return RFModelConfig(model_name=MODEL, peft_config=RFLoraConfig(r=8), callbacks=model_callbacks,
                         training_args=RFSFTConfig(max_steps=2, **train))  # fmt: skip


def test_callbacks_are_knobs_on_both_configs():
    count = Count()
    runs = RFGridSearch(_config(Log, callbacks=List([[count], [Count, Log()]]))).expand()
    assert len(runs) == 2
    assert runs[0].model_config.training_args.callbacks[0] is count  # shared until a run is built
    assert runs[0].knobs["callbacks"] == "Log"
    assert [r.knobs["train.callbacks"] for r in runs] == [["Count"], ["Count", "Log"]]
    # never passed to TRL's config, and not translated away with a warning either
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigTranslationWarning)
        trl_args = runs[1].training_args(output_dir="/tmp/x")
    assert not hasattr(trl_args, "callbacks") and trl_args.max_steps == 2


def test_anything_but_trainer_callbacks_is_refused_at_once():
    with pytest.raises(
        ConfigError, match=r"RFSFTConfig.callbacks: expected TrainerCallback \| type\[TrainerCallback\]"
    ):
        RFSFTConfig(callbacks=[object()])
    with pytest.raises(ConfigError, match=r"RFModelConfig.callbacks: expected"):
        RFModelConfig(model_name=MODEL, callbacks=[dict])
    assert matches(Count, type[TrainerCallback]) and not matches(dict, type[TrainerCallback])
    assert describe(type[TrainerCallback]) == "type[TrainerCallback]"


def test_callbacks_a_run_cannot_have_its_own_copy_of_are_refused_before_training():
    with pytest.raises(ConfigError) as err:
        RFGridSearch(_config(callbacks=[Log(), NeedsArgs])).expand()
    assert "configs[0].training_args.callbacks[1]: NeedsArgs needs arguments: pass an instance" in str(
        err.value
    )
    with pytest.raises(ConfigError) as err:
        RFGridSearch(_config(HoldsALock())).expand()
    assert "configs[0].callbacks[0]: HoldsALock cannot be copied for each run (TypeError" in str(err.value)
    assert "pass its class, or make it deep-copyable" in str(err.value)
