"""Dagster wiring only: every module-level asset, check, job and sensor here is loaded by
``definitions.py`` (``dg.load_from_defs_folder``), which adds the resources."""
