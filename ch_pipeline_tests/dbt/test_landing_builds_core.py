"""The companies landing run builds the core after landing (docs/architecture.md §7): real broker, real
DuckDB, real bulk load, real dbt, one real Dagster instance; the sensor is evaluated against it and its
run requests executed the way the daemon would launch them (their asset selection and run config).
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from ch_pipeline.companies_house.streams import COMPANIES, STREAMS
from ch_pipeline.definitions import defs
from ch_pipeline.defs.dbt import ch_dbt_models, dbt_automation_sensor, dbt_resource
from ch_pipeline.defs.resources import KafkaResource, WarehouseResource
from ch_pipeline.defs.stream import CORE_BUILD, build_kafka_sensor, core_is_built, company_house_stream
from ch_pipeline.kafka.offsets import parse_partition_key
from ch_pipeline.warehouse.schema import STREAM_TABLE
from ch_pipeline_tests.dbt.conftest import DBT_MODELS, Ticks, configure_environment, load_bulk
from ch_pipeline_tests.warehouse.messages import company_event, company_number

EVENTS = 60


@pytest.fixture
def kafka(broker, topic_name) -> KafkaResource:
    broker.create_topic(topic_name, 2)
    return KafkaResource(bootstrap_servers=broker.bootstrap_servers, topic=topic_name)


def produce_events(kafka: KafkaResource, first: int, count: int) -> dict[str, str]:
    """``count`` company events with new names; returns company number -> the name each one now has."""
    from confluent_kafka import Producer

    producer = Producer(kafka.client_config())
    names = {}
    for i in range(first, first + count):
        event = company_event(i)
        names[company_number(i)] = event["data"]["company_name"]
        producer.produce(kafka.topic, value=json.dumps(event).encode(), key=company_number(i).encode(), partition=i % 2)
    assert producer.flush(30) == 0
    return names


def sensor(max_batch_messages: int = 100_000) -> dg.SensorDefinition:
    return build_kafka_sensor(max_batch_messages=max_batch_messages, build_ready=core_is_built)


def tick(instance: dg.DagsterInstance, kafka: KafkaResource, cursor: str | None = None) -> dg.SensorResult:
    return sensor(max_batch_messages=25)(dg.build_sensor_context(instance=instance, cursor=cursor, resources={"kafka": kafka}))


def execute(request: dg.RunRequest, instance: dg.DagsterInstance, kafka: KafkaResource, db: Path) -> dg.ExecuteInProcessResult:
    """The run the daemon launches for ``request``: the job's assets, narrowed by its asset selection."""
    selection = request.asset_selection or [company_house_stream.key, *CORE_BUILD.resolve(defs.resolve_asset_graph())]
    return dg.materialize(
        [company_house_stream, ch_dbt_models],
        selection=selection,
        run_config=request.run_config,
        instance=instance,
        resources={"kafka": kafka, "warehouse": WarehouseResource(duckdb_path=str(db)), "dbt": dbt_resource()},
        tags=request.tags,
    )


def core_names(db: Path, numbers) -> dict[str, str]:
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("select company_number, company_name from company_house_core where company_number in "
                           f"({', '.join('?' * len(numbers))})", list(numbers)).fetchall()  # fmt: skip
    return dict(rows)


def test_the_job_lands_then_builds_the_cores_execution_set():
    job = defs.resolve_job_def("company_house_stream_job")
    keys = {key.to_user_string() for key in job.asset_layer.executable_asset_keys}
    assert keys == {STREAM_TABLE} | DBT_MODELS


def test_companies_runs_go_first_in_the_queue_and_the_pool():
    """The run priority (Dagster's ``dagster/priority`` tag: the queue's order and the pool's claims)."""
    priorities = {spec.name: defs.resolve_job_def(spec.landing_job).tags.get("dagster/priority") for spec in STREAMS.values()}
    assert priorities.pop(COMPANIES) == "1"
    assert set(priorities.values()) == {"0"}
    assert dbt_automation_sensor.run_tags == {"dagster/priority": "1"}  # the bulk load and the builds, too


def test_before_the_cores_first_build_every_run_only_lands(instance_with_db, kafka, bulk_csv):
    """The first build (the bulk snapshot) is the automation's; a landing run building beside it would
    be a second full build (measured in the demo: both at once, right after the bulk load)."""
    instance, db = instance_with_db
    load_bulk(db, bulk_csv, instance)
    produce_events(kafka, 0, EVENTS)
    result = tick(instance, kafka)
    assert len(result.run_requests) == 3  # 60 messages in batches of at most 25
    assert all(request.asset_selection == [company_house_stream.key] for request in result.run_requests)


def built_from_the_bulk_file(instance: dg.DagsterInstance, db: Path, bulk_csv: Path) -> None:
    """The bulk file loaded and the core's first build, as the automation runs them."""
    load_bulk(db, bulk_csv, instance)
    assert dg.materialize([ch_dbt_models], resources={"dbt": dbt_resource()}, instance=instance).success


def test_once_the_core_is_built_the_ticks_last_run_also_builds_it(instance_with_db, kafka, bulk_csv):
    instance, db = instance_with_db
    built_from_the_bulk_file(instance, db, bulk_csv)
    names = produce_events(kafka, 0, EVENTS)
    requests = tick(instance, kafka).run_requests
    assert [request.asset_selection for request in requests] == [[company_house_stream.key]] * 2 + [None]
    # Landed in the order requested; the last run builds the core after its landing, in one run.
    results = [execute(request, instance, kafka, db) for request in requests]
    landed_offsets = sum(sum(r.size for r in parse_partition_key(req.run_key)) for req in requests)
    assert landed_offsets == EVENTS
    assert core_names(db, names) == names
    last = results[-1]
    assert {event.asset_key.to_user_string() for event in last.get_asset_materialization_events()} == {STREAM_TABLE} | DBT_MODELS
    # The automation sees that the build followed the landing in the same run: no second build.
    assert Ticks(instance).requested() == set()


def test_a_landing_after_the_build_still_triggers_the_automation(instance_with_db, kafka, bulk_csv):
    instance, db = instance_with_db
    built_from_the_bulk_file(instance, db, bulk_csv)
    produce_events(kafka, 0, 10)
    result = tick(instance, kafka)
    execute(result.run_requests[-1], instance, kafka, db)
    ticks = Ticks(instance)
    assert ticks.requested() == set()
    # A landing-only run after the build (a retried earlier batch, say): the core has not seen it.
    later = produce_events(kafka, 10, 10)
    landing_only = tick(instance, kafka, result.cursor).run_requests[-1]
    execute(dg.RunRequest(run_key=landing_only.run_key, run_config=landing_only.run_config,
                          asset_selection=[company_house_stream.key]), instance, kafka, db)  # fmt: skip
    assert ticks.requested() == DBT_MODELS
    materialized = dg.materialize([ch_dbt_models], resources={"dbt": dbt_resource()}, instance=instance)
    assert materialized.success and core_names(db, later) == later
    assert ticks.requested() == set()


@pytest.fixture
def instance_with_db(tmp_path: Path):
    with pytest.MonkeyPatch.context() as env, dg.instance_for_test() as instance:
        yield instance, configure_environment(env, tmp_path)
