"""The dbt trigger cannot be lost to timing: real landing and dbt runs, the project's own condition.

Under the daemon a landing run that waited for the ``duckdb`` pool behind a dbt build ends a few
seconds after it, so its update and the end of the build are seen by the same automation tick.
An event-based condition (``inputs_updated.since(requested | updated)``) lets the build's reset win
that tie and the landing never reaches the core while the stream stays quiet.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from confluent_kafka import Producer

from dagster_dbt import DbtCliResource

from ch_pipeline.companies_house.bulk_csv import write_sample
from ch_pipeline.defs.dbt import ch_dbt_models, ch_dbt_project, dbt_executable
from ch_pipeline.companies_house.replay_server import ReplayServer
from ch_pipeline.kafka.broker import LocalBroker
from ch_pipeline_tests.dbt.conftest import DBT_MODELS, Ticks, configure_environment, load_bulk
from ch_pipeline_tests.reliability.harness import Pipeline


def company_event(number: str, timepoint: int, name: str) -> bytes:
    return json.dumps({
        "resource_kind": "company-profile", "resource_uri": f"/company/{number}", "resource_id": number,
        "data": {"company_number": number, "company_name": name, "company_status": "active",
                 "date_of_creation": "2020-01-01", "registered_office_address": {"postal_code": "AB1 2CD"}},
        "event": {"timepoint": timepoint, "published_at": f"2026-01-05T09:00:{timepoint:02d}", "type": "changed"},
    }).encode()  # fmt: skip


def produce(bootstrap: str, topic: str, companies: dict[str, str], first_timepoint: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for i, (number, name) in enumerate(companies.items()):
        producer.produce(topic, key=number.encode(), value=company_event(number, first_timepoint + i, name))
    assert producer.flush(10) == 0


@pytest.fixture
def pipeline(broker: LocalBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    topic = f"timing_{uuid.uuid4().hex[:10]}"
    broker.create_topic(topic, 1)
    db = configure_environment(monkeypatch, tmp_path)
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        load_bulk(db, write_sample(tmp_path / "bulk.csv", 50, seed=5), instance)
        yield Pipeline(tmp_path, broker.bootstrap_servers, topic, ReplayServer(events=1), instance, db)


def core_names(db: Path) -> dict[str, str]:
    with duckdb.connect(str(db), read_only=True) as con:
        return dict(con.execute("select company_number, company_name from company_house_core where company_number like 'NC%'").fetchall())


def test_a_landing_that_ends_right_after_a_build_still_reaches_the_core(pipeline: Pipeline, monkeypatch, tmp_path):
    monkeypatch.setenv("DBT_TARGET_PATH", str(tmp_path / "dbt-target"))
    ticks = Ticks(pipeline.instance)
    produce(pipeline.bootstrap_servers, pipeline.topic, {"NC000001": "FIRST LTD", "NC000002": "SECOND LTD"}, 1)
    (first,) = pipeline.tick()
    pipeline.land(first)
    assert ticks.requested() == DBT_MODELS
    pipeline.dbt()  # the requested build; meanwhile the Kafka sensor cut a new partition ...
    produce(pipeline.bootstrap_servers, pipeline.topic, {"NC000003": "THIRD LTD"}, 10)
    (second,) = pipeline.tick()
    pipeline.land(second)  # ... whose run waited for the pool and ends just after the build

    requested = [ticks.requested() for _ in range(3)]  # the stream is quiet from here on
    assert requested[0] == DBT_MODELS, f"the landing after the build triggered nothing: {requested}"
    pipeline.dbt()
    assert core_names(pipeline.db) == {"NC000001": "FIRST LTD", "NC000002": "SECOND LTD", "NC000003": "THIRD LTD"}
    # Once a build has started after the last landing, nothing more is requested.
    assert ticks.requested() == set()
    # Every build wrote to the one reused dbt target folder (no per-run folder left behind).
    assert [path.name for path in (tmp_path / "dbt-target").iterdir()] == ["ch_dbt_models"]


def test_a_failed_build_is_left_to_run_retries_not_requested_every_tick(pipeline: Pipeline):
    """A build that keeps failing must not be re-requested at every tick (run retries re-run it)."""
    ticks = Ticks(pipeline.instance)
    produce(pipeline.bootstrap_servers, pipeline.topic, {"NC000001": "FIRST LTD"}, 1)
    (key,) = pipeline.tick()
    pipeline.land(key)
    assert ticks.requested() == DBT_MODELS
    broken = DbtCliResource(project_dir=ch_dbt_project, dbt_executable=dbt_executable(), target="no_such_target")
    result = dg.materialize([ch_dbt_models], resources={"dbt": broken}, instance=pipeline.instance, raise_on_error=False)
    assert not result.success
    assert ticks.requested() == set()
    # New data after the failed build triggers again.
    produce(pipeline.bootstrap_servers, pipeline.topic, {"NC000002": "SECOND LTD"}, 5)
    (key,) = pipeline.tick()
    pipeline.land(key)
    assert ticks.requested() == DBT_MODELS
