"""Shared fixtures: a real Kafka-protocol broker (tansu) for the whole session."""

from __future__ import annotations

import uuid

import pytest

from ch_pipeline.kafka.broker import LocalBroker


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
