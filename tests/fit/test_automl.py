"""`rapidfire_core.fit.automl` is `rapidfire_core.automl` under RapidFire AI's fit-mode name."""

from __future__ import annotations

import rapidfire_core.automl as automl
import rapidfire_core.fit as fit
from rapidfire_core.experiment import Experiment
from rapidfire_core.fit import automl as fit_automl


def test_every_automl_name_is_the_same_object_under_fit():
    assert fit_automl.__all__ == automl.__all__
    for name in automl.__all__:
        assert getattr(fit_automl, name) is getattr(automl, name), name


def test_fit_namespace_holds_the_experiment():
    assert fit.Experiment is Experiment
    assert fit.automl is fit_automl
