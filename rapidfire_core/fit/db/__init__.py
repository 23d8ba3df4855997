"""RapidFire AI's ``rapidfireai.fit.db`` namespace, renamed: ``rf_db.RfDb`` (see that module)."""
