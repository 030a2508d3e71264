"""Dagster wiring only: assets, sensors, checks and resources, composed in ``definitions.py``."""
