"""Settings TRL only warns about and then fails on are refused before training, at the field."""

from __future__ import annotations

import pytest

from rapidfire_core.automl import List, RFDPOConfig, RFGridSearch, RFLoraConfig, RFModelConfig, RFSFTConfig
from rapidfire_core.errors import ConfigError


def _dpo(**fields) -> RFModelConfig:
    return RFModelConfig(model_name="m", peft_config=RFLoraConfig(r=4), training_args=RFDPOConfig(**fields))


@pytest.mark.parametrize("smoothing", [0.5, 0.7, -0.1])
def test_robust_dpo_needs_label_smoothing_below_a_half(smoothing):
    with pytest.raises(ConfigError) as caught:
        RFGridSearch(_dpo(loss_type="robust", label_smoothing=smoothing), trainer_type="DPO").expand()
    text = str(caught.value)
    assert "training_args.label_smoothing" in text
    assert f"label_smoothing={smoothing!r} with loss_type='robust' must lie in [0.0, 0.5)" in text


def test_robust_dpo_with_a_legal_smoothing_and_other_losses_pass():
    config = List(
        [_dpo(loss_type="robust", label_smoothing=0.1), _dpo(loss_type="sigmoid", label_smoothing=0.5)]
    )
    assert len(RFGridSearch(config, trainer_type="DPO").expand()) == 2


def test_the_rule_sees_a_multi_loss_list_and_exo_pair():
    with pytest.raises(ConfigError, match="loss_type='robust'"):
        RFGridSearch(_dpo(loss_type=["sigmoid", "robust"], label_smoothing=0.5), trainer_type="DPO").expand()
    with pytest.raises(ConfigError, match="loss_type='exo_pair' needs label_smoothing > 0"):
        RFGridSearch(_dpo(loss_type="exo_pair"), trainer_type="DPO").expand()


def test_ref_model_name_outside_dpo_is_refused():
    config = RFModelConfig(model_name="m", ref_model_name="other", training_args=RFSFTConfig(max_steps=1))
    with pytest.raises(ConfigError, match="ref_model_name='other': only DPO runs take a separate reference"):
        RFGridSearch(config, trainer_type="SFT").expand()
