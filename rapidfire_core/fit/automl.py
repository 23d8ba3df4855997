"""``rapidfire_core.fit.automl``: RapidFire AI's ``rapidfireai.fit.automl``, renamed.

The very objects of ``rapidfire_core.automl`` (see that package for what each one is).
"""

from __future__ import annotations

from rapidfire_core.automl import *  # noqa: F403 - this module is that package under its RapidFire name
from rapidfire_core.automl import __all__  # noqa: F401
