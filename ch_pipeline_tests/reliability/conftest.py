"""Fixtures of the crash matrix and the outage tests: one scenario = one fresh ``Pipeline``.

``--reliability-full`` runs every scenario over more seeds of the generated history.
"""

from __future__ import annotations

import uuid
from contextlib import ExitStack
from pathlib import Path

import dagster as dg
import pytest

from ch_pipeline.companies_house.bulk_csv import write_sample
from ch_pipeline.companies_house.replay_server import ReplayServer
from ch_pipeline.kafka.broker import LocalBroker
from ch_pipeline_tests.dbt.conftest import configure_environment, load_bulk
from ch_pipeline_tests.reliability.harness import (
    BULK_COMPANIES,
    DBT_FAULTS,
    DEFAULT_SEED,
    FULL_SEEDS,
    HISTORY_EVENTS,
    LANDING_FAULTS,
    OUTCOMES,
    PRODUCER_FAULTS,
    TOPIC_PARTITIONS,
    Pipeline,
    copy_warehouse,
    format_outcomes,
)

FULL_OPTION = "--reliability-full"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(FULL_OPTION, action="store_true", default=False,
                     help=f"crash matrix and outages over seeds {FULL_SEEDS} instead of {DEFAULT_SEED} only")  # fmt: skip


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # The option exists only when this conftest was loaded at startup (pytest's rule for
    # pytest_addoption); a whole-suite run without it gets the default mode.
    full = metafunc.config.getoption(FULL_OPTION, default=False)
    if "history_seed" in metafunc.fixturenames:
        metafunc.parametrize("history_seed", FULL_SEEDS if full else (DEFAULT_SEED,), ids=lambda seed: f"seed{seed}")
    for name, points in (("producer_faults", PRODUCER_FAULTS), ("landing_faults", LANDING_FAULTS), ("dbt_faults", DBT_FAULTS)):
        if name in metafunc.fixturenames:
            # Default: a component's fault points chained in one scenario; full: one scenario each.
            groups = [(point,) for point in points] if full else [points]
            metafunc.parametrize(name, groups, ids=_fault_ids)


def _fault_ids(points: tuple) -> str:
    return "+".join(point[0] if isinstance(point, tuple) else point for point in points).replace(" ", "_")


def session_table() -> tuple[str, list[str], list[str]] | None:
    """The outcome table (title, header lines, rows); the root conftest prints it at the end."""
    if not OUTCOMES:
        return None
    lines = format_outcomes(OUTCOMES).splitlines()
    return "crash matrix and outages: outcome per fault point", lines[:2], lines[2:]


@pytest.fixture(scope="session")
def reliability_full(request: pytest.FixtureRequest) -> bool:
    return request.config.getoption(FULL_OPTION, default=False)


@pytest.fixture(scope="session")
def bulk_warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DuckDB file with the bulk snapshot loaded by the real asset, copied by every scenario."""
    root = tmp_path_factory.mktemp("bulk-template")
    db = root / "warehouse.duckdb"
    load_bulk(db, write_sample(root / "bulk.csv", BULK_COMPANIES, seed=5))
    return db


@pytest.fixture
def open_pipeline(bulk_warehouse: Path, tmp_path: Path, history_seed: int, monkeypatch: pytest.MonkeyPatch):
    """Open one scenario's ``Pipeline`` on a given broker; ``server`` replaces the default replay server."""
    with ExitStack() as stack:

        def open_on(broker: LocalBroker, server: ReplayServer | None = None) -> Pipeline:
            topic = f"reliability_{uuid.uuid4().hex[:10]}"
            broker.create_topic(topic, TOPIC_PARTITIONS)
            db = copy_warehouse(bulk_warehouse, tmp_path)
            assert configure_environment(monkeypatch, tmp_path) == db  # dbt (a subprocess) finds the file by env
            server = stack.enter_context(server or ReplayServer(events=HISTORY_EVENTS, seed=history_seed, heartbeat_interval=0.2))
            home = tmp_path / "dagster"
            home.mkdir()
            # DAGSTER_HOME is set to the instance's directory: child processes (a landing run) share it.
            instance = stack.enter_context(dg.instance_for_test(temp_dir=str(home)))
            return Pipeline(tmp_path, broker.bootstrap_servers, topic, server, instance, db)

        yield open_on


@pytest.fixture
def pipeline(broker: LocalBroker, open_pipeline) -> Pipeline:
    """A scenario on the session's broker (memory storage)."""
    return open_pipeline(broker)
