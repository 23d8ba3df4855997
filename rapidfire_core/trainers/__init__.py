"""TRL integration: one stock TRL trainer per run, driven chunk by chunk."""
