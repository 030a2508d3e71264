"""One script per measure, each runnable as ``python -m benchmarks.<name>`` and exposing
``run() -> list[dict]`` rows ``{measure, ours, baseline, ratio, unit}``; ``python -m benchmarks`` runs all."""
