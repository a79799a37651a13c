"""Shared test helpers (tiny on-disk models and pipelines)."""
