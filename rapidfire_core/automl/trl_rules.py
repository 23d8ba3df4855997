"""Settings TRL 1.x accepts (with a log warning, or with an error only once a trainer is built)
and then fails on: refused before any training, at the field.

===========================================  ================================================
setting                                      what TRL does with it
===========================================  ================================================
DPO ``loss_type`` "robust" with              DPOTrainer logs "should lie in [0.0, 0.5)" and
``label_smoothing`` outside [0, 0.5)         trains: the loss divides by ``1 - 2 *
                                             label_smoothing`` (0 at 0.5: a NaN gradient norm
                                             at step 1; its sign flips above 0.5)
DPO ``loss_type`` "exo_pair" with            DPOTrainer raises when the run's trainer is
``label_smoothing == 0``                     built (after run_fit's validation: the run would
                                             fail instead of being refused)
``ref_model_name`` on an SFT or GRPO run     only DPO takes a separate reference model here
                                             (GRPO's reference is the base model with the
                                             run's adapter disabled)
===========================================  ================================================

``loss_type`` may be one name or a list of them (TRL's multi-loss DPO).
"""

from __future__ import annotations

from typing import Any


def _loss_types(ta: Any) -> list[str]:
    value = getattr(ta, "loss_type", None)
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def divergent_setting_problems(mc: Any, trainer_type: str) -> list[tuple[str, str]]:
    """``(path inside the RFModelConfig, message)`` for each setting of the table above."""
    problems: list[tuple[str, str]] = []
    ta = mc.training_args
    if trainer_type == "DPO" and ta is not None:
        smoothing = getattr(ta, "label_smoothing", 0.0) or 0.0
        losses = _loss_types(ta)
        if "robust" in losses and not 0.0 <= smoothing < 0.5:
            problems.append(
                (
                    "training_args.label_smoothing",
                    f"label_smoothing={smoothing!r} with loss_type='robust' must lie in [0.0, 0.5): "
                    "the robust loss divides by 1 - 2 * label_smoothing (TRL only warns, then the run "
                    "fails with a NaN gradient norm at 0.5)",
                )
            )
        if "exo_pair" in losses and smoothing == 0.0:
            problems.append(
                (
                    "training_args.label_smoothing",
                    "loss_type='exo_pair' needs label_smoothing > 0 (TRL refuses 0.0 when the trainer "
                    "is built; the EXO paper recommends 1e-3)",
                )
            )
    if trainer_type != "DPO" and getattr(mc, "ref_model_name", None):
        problems.append(
            (
                "ref_model_name",
                f"ref_model_name={mc.ref_model_name!r}: only DPO runs take a separate reference model here "
                f"(this is a {trainer_type} run); remove it",
            )
        )
    return problems


__all__ = ["divergent_setting_problems"]
