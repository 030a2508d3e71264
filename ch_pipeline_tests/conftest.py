"""Shared fixtures: a real Kafka-protocol broker (tansu) for the whole session, and the offline BigQuery
emulator (``bigquery_emulator``, ``bigquery_dataset``), also one per session.

The emulator's fixtures are registered here, once: a session-scoped fixture imported into each test
module instead is a separate fixture per module, so each module started its own emulator."""

from __future__ import annotations

import uuid

import pytest

from ch_pipeline.kafka.broker import LocalBroker
from ch_pipeline_tests.bigquery_emulator import bigquery_dataset, bigquery_emulator  # noqa: F401 (fixtures)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory):
    """One real broker process for the test session, stopped whatever happens."""
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with LocalBroker(log_path=log) as running:
        yield running


@pytest.fixture
def topic_name() -> str:
    """A fresh topic name per test, so tests sharing the broker never see each other's data."""
    return f"test_{uuid.uuid4().hex[:12]}"
