"""The daemon suite's outcome table: one row per scenario, printed at the end of the session."""

from __future__ import annotations

from dataclasses import dataclass

import pytest


@dataclass
class ScenarioOutcome:
    scenario: str
    faults: str
    recovery: str
    converge_seconds: float  # after the last fault (or the end of the stream)
    bound_seconds: float
    verdict: str


OUTCOMES: list[ScenarioOutcome] = []


@pytest.fixture
def record_outcome():
    def record(outcome: ScenarioOutcome) -> None:
        OUTCOMES.append(outcome)
        print(f"\n[{outcome.scenario}] {outcome.faults}\n  recovery: {outcome.recovery}\n"
              f"  converged {outcome.converge_seconds:.1f}s after the last fault (bound {outcome.bound_seconds:.0f}s): {outcome.verdict}")  # fmt: skip

    return record


def session_table() -> tuple[str, list[str], list[str]] | None:
    """The outcome table (title, header lines, rows); the root conftest prints it at the end."""
    if not OUTCOMES:
        return None
    header = ["| scenario | faults | what the pipeline did | converged after last fault (s) | bound (s) | verdict |", "|---|---|---|---|---|---|"]
    rows = [f"| {o.scenario} | {o.faults} | {o.recovery} | {o.converge_seconds:.1f} | {o.bound_seconds:.0f} | {o.verdict} |" for o in OUTCOMES]
    return "daemon crash matrix: outcome per scenario", header, rows
