"""Errors and warning categories shared across rapidfire_core.

``ConfigError`` is raised for bad user input (unknown field, wrong type, invalid search
space, a config TRL itself rejects) *before* any training starts; its message names the
field and the config class. ``ConfigTranslationWarning`` is emitted when a setting is
accepted but changed on the way to TRL (a legacy field translated, a GPU-only setting
turned off on a machine without a GPU); each warning is one line saying what became what.
"""

from __future__ import annotations


class RapidFireError(Exception):
    """Base class of every error rapidfire_core raises on purpose."""


class ConfigError(RapidFireError, ValueError):
    """Invalid configuration or search space; the message names the field and the config."""


class ConfigTranslationWarning(UserWarning):
    """A config value was accepted but translated (legacy field, CPU fallback) for the installed TRL."""


__all__ = ["ConfigError", "ConfigTranslationWarning", "RapidFireError"]
