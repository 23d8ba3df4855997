"""RapidFire AI's ``rapidfireai.fit.utils`` namespace, renamed: ``interactive_controller``."""
