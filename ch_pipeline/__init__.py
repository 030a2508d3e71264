"""ch-pipeline."""
