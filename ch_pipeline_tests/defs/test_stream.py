"""The Kafka sensor and the stream asset, end to end: real broker, real DuckDB, real Dagster instance.

The tests play the daemon's part: evaluate the sensor against a real instance and execute its run
requests (their run config) with ``dg.materialize``.
"""

from __future__ import annotations

import json

import dagster as dg
import duckdb
import pytest

from dagster._core.test_utils import create_run_for_test

from ch_pipeline.defs.resources import KafkaResource, WarehouseResource

from ch_pipeline.defs.stream import (
    OFFSETS_TAG,
    build_kafka_sensor,
    company_house_stream,
    company_house_stream_job,
    landing_run_config,
)
from ch_pipeline.kafka.broker import free_port
from ch_pipeline.kafka.offsets import parse_partition_key
from ch_pipeline.warehouse.schema import REJECT_COLUMNS, REJECTS_TABLE, STREAM_TABLE, duckdb_ddl
from ch_pipeline_tests.support.kafka import assert_contiguous
from ch_pipeline_tests.warehouse.messages import corpus, produce, produce_filler


@pytest.fixture
def kafka(broker, topic_name) -> KafkaResource:
    broker.create_topic(topic_name, 2)
    return KafkaResource(bootstrap_servers=broker.bootstrap_servers, topic=topic_name)


@pytest.fixture
def warehouse(tmp_path) -> WarehouseResource:
    return WarehouseResource(duckdb_path=str(tmp_path / "warehouse.duckdb"))


@pytest.fixture
def instance():
    with dg.instance_for_test() as test_instance:
        yield test_instance


def tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, kafka: KafkaResource, cursor: str | None):
    """One sensor evaluation."""
    return sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources={"kafka": kafka}))


def run(instance, kafka, warehouse, key: str, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [company_house_stream],
        run_config=landing_run_config(key),
        instance=instance,
        resources={"kafka": kafka, "warehouse": warehouse},
        raise_on_error=raise_on_error,
    )


def landed(warehouse: WarehouseResource, table: str) -> list[tuple[int, int]]:
    with duckdb.connect(warehouse.duckdb_path, read_only=True) as con:
        return con.execute(f"SELECT kafka_partition, kafka_offset FROM {table} ORDER BY ALL").fetchall()


def test_sensor_and_runs_land_each_message_exactly_once(instance, kafka, warehouse):
    messages = produce(kafka.bootstrap_servers, kafka.topic, corpus(10_000, partitions=2, malformed=50, flat=50))
    sensor = build_kafka_sensor(max_batch_messages=4_000)

    result = tick(sensor, instance, kafka, cursor=None)
    keys = [request.run_key for request in result.run_requests]
    assert len(keys) == 3 and [request.tags[OFFSETS_TAG] for request in result.run_requests] == keys
    assert [request.run_config for request in result.run_requests] == [landing_run_config(key).to_config_dict() for key in keys]
    ends = {p: max(o for q, o in messages if q == p) + 1 for p in (0, 1)}
    assert json.loads(result.cursor) == {str(p): end for p, end in ends.items()}
    for key in keys:
        run(instance, kafka, warehouse, key)

    valid = sorted(c for c, m in messages.items() if m.valid)
    malformed = sorted(c for c, m in messages.items() if not m.valid)
    assert len(valid) == 9_950 and len(malformed) == 50
    assert landed(warehouse, STREAM_TABLE) == valid
    assert landed(warehouse, REJECTS_TABLE) == malformed

    # A crash before the cursor was saved: the next tick starts from the old cursor again. Same
    # keys, and running them all again still holds every message once.
    replay = tick(sensor, instance, kafka, cursor=None)
    assert [request.run_key for request in replay.run_requests] == keys
    for key in keys:
        run(instance, kafka, warehouse, key)
    assert landed(warehouse, STREAM_TABLE) == valid
    assert landed(warehouse, REJECTS_TABLE) == malformed

    with duckdb.connect(warehouse.duckdb_path, read_only=True) as con:
        flat = con.execute(f"SELECT count(*) FROM {STREAM_TABLE} WHERE timepoint IS NULL AND resource_kind IS NULL").fetchone()
        raw = con.execute(f"SELECT kafka_partition, kafka_offset, raw_event FROM {STREAM_TABLE}").fetchall()
        na = con.execute(f"SELECT count(*) FROM {STREAM_TABLE} WHERE 'NA' IN (company_name, postal_code, company_status)").fetchone()
    assert flat == (50,) and na == (0,)
    assert all(messages[(p, o)].value.decode() == text for p, o, text in raw)

    materialization = instance.get_latest_materialization_event(company_house_stream.key).asset_materialization
    metadata = materialization.metadata
    assert metadata["rows"].value + metadata["rejects"].value == sum(r.size for r in parse_partition_key(metadata["landing"].value))
    assert metadata["bytes"].value > 0 and metadata["min_published_at"].value <= metadata["max_published_at"].value
    assert set(metadata["offsets"].value) <= {"p0", "p1"}


def test_a_run_that_fails_mid_landing_leaves_nothing_and_its_retry_lands_all(instance, kafka, warehouse):
    messages = produce(kafka.bootstrap_servers, kafka.topic, corpus(1_000, malformed=10, flat=10, duplicates=5))
    (request,) = tick(build_kafka_sensor(), instance, kafka, cursor=None).run_requests
    # The rejects table refuses every row, so the landing transaction fails after its stream insert.
    with warehouse.duckdb_connection() as con:
        con.execute(duckdb_ddl(REJECTS_TABLE, REJECT_COLUMNS).replace("\n)", ",\n  CHECK (kafka_offset < 0)\n)"))
    failed = run(instance, kafka, warehouse, request.run_key, raise_on_error=False)
    assert not failed.success
    with duckdb.connect(warehouse.duckdb_path, read_only=True) as con:
        assert con.execute(f"SELECT count(*) FROM {STREAM_TABLE}").fetchone() == (0,)
    with warehouse.duckdb_connection() as con:
        con.execute(f"DROP TABLE {REJECTS_TABLE}")  # the cause is fixed; the retry lands everything
    assert run(instance, kafka, warehouse, request.run_key).success
    assert len(landed(warehouse, STREAM_TABLE)) + len(landed(warehouse, REJECTS_TABLE)) == len(messages) == 1_000


def test_a_250k_backlog_becomes_three_contiguous_partitions(instance, kafka):
    produce_filler(kafka.bootstrap_servers, kafka.topic, {0: 150_000, 1: 100_000}, size=20)
    result = tick(build_kafka_sensor(max_batch_messages=100_000), instance, kafka, cursor=None)
    batches = [parse_partition_key(request.run_key) for request in result.run_requests]
    assert [sum(r.size for r in batch) for batch in batches] == [100_000, 100_000, 50_000]
    assert_contiguous(batches, {0: 0, 1: 0}, {0: 150_000, 1: 100_000})
    assert json.loads(result.cursor) == {"0": 150_000, "1": 100_000}
    # Nothing new: a skip, and the cursor stays where it is.
    again = tick(build_kafka_sensor(max_batch_messages=100_000), instance, kafka, cursor=result.cursor)
    assert not again.run_requests and "no new messages" in again.skip_reason.skip_message
    assert json.loads(again.cursor) == json.loads(result.cursor)


def test_while_two_runs_of_the_job_are_in_flight_a_tick_cuts_nothing_and_the_next_one_takes_everything(instance, kafka):
    """The back-pressure of a short interval: a steady stream must not queue a run per tick faster than
    the duckdb pool serves them; what a skipped tick would have cut is landed by the next one."""
    sensor = build_kafka_sensor()
    job_name = company_house_stream_job.name
    produce_filler(kafka.bootstrap_servers, kafka.topic, {0: 30, 1: 20}, size=20)
    first = tick(sensor, instance, kafka, cursor=None)
    assert [r.run_key for r in first.run_requests] == ["p0:0-29,p1:0-19"]
    in_flight = [create_run_for_test(instance, job_name=job_name, status=s) for s in (dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTED)]
    # Another job's runs do not count, nor do runs that have ended.
    create_run_for_test(instance, job_name="other_job", status=dg.DagsterRunStatus.STARTED)
    create_run_for_test(instance, job_name=job_name, status=dg.DagsterRunStatus.SUCCESS)

    produce_filler(kafka.bootstrap_servers, kafka.topic, {0: 5, 1: 5}, size=20)
    held = tick(sensor, instance, kafka, cursor=first.cursor)
    assert not held.run_requests and f"2 runs of {job_name} queued or running" in held.skip_reason.skip_message
    assert json.loads(held.cursor) == json.loads(first.cursor)

    produce_filler(kafka.bootstrap_servers, kafka.topic, {0: 5, 1: 5}, size=20)
    instance.report_run_failed(in_flight[1])  # one ended: one run may start beside the other
    resumed = tick(sensor, instance, kafka, cursor=held.cursor)
    assert [r.run_key for r in resumed.run_requests] == ["p0:30-39,p1:20-29"]
    assert json.loads(resumed.cursor) == {"0": 40, "1": 30}


def test_kafka_partitions_unknown_to_the_cursor_are_picked_up(instance, broker, topic_name):
    """A partition added to the topic later is one the cursor does not know yet. The local broker
    cannot add partitions (CreatePartitions is unsupported), so the topic has three from the start
    and the cursor of an earlier tick knows only two; metadata is read afresh on every tick."""
    broker.create_topic(topic_name, 3)
    kafka = KafkaResource(bootstrap_servers=broker.bootstrap_servers, topic=topic_name)
    produce_filler(kafka.bootstrap_servers, topic_name, {0: 10, 1: 7, 2: 7})
    result = tick(build_kafka_sensor(), instance, kafka, cursor='{"0": 10, "1": 5}')
    assert [r.run_key for r in result.run_requests] == ["p1:5-6,p2:0-6"]
    assert json.loads(result.cursor) == {"0": 10, "1": 7, "2": 7}


def test_a_broker_that_is_down_gives_a_skip_reason(instance):
    down = KafkaResource(bootstrap_servers=f"127.0.0.1:{free_port()}", topic="company_house")
    result = tick(build_kafka_sensor(probe_timeout_seconds=1), instance, down, cursor='{"0": 5}')
    assert isinstance(result, dg.SkipReason) and "did not answer" in result.skip_message


def test_a_missing_topic_gives_a_skip_reason(instance, broker, topic_name):
    kafka = KafkaResource(bootstrap_servers=broker.bootstrap_servers, topic=topic_name)
    result = tick(build_kafka_sensor(), instance, kafka, cursor=None)
    assert isinstance(result, dg.SkipReason) and "does not exist" in result.skip_message


def test_definitions_wire_the_sensor_and_the_lineage():
    from ch_pipeline.definitions import defs

    sensor = defs.resolve_sensor_def("company_house_kafka_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.job_name == "company_house_stream_job"
    assert defs.resolve_job_def("company_house_stream_job").executor_def.name == "in_process"
    graph = defs.resolve_asset_graph()
    assert dg.AssetKey("company_house_topic") in graph.get(company_house_stream.key).parent_keys
    assert dg.AssetKey("company_house_streaming_api") in graph.get(dg.AssetKey("company_house_topic")).parent_keys


def test_a_cursor_past_the_end_cuts_nothing_and_says_why(instance, kafka):
    """E.g. the topic was recreated: nothing is cut from offsets that do not exist."""
    produce_filler(kafka.bootstrap_servers, kafka.topic, {0: 3, 1: 3})
    result = tick(build_kafka_sensor(), instance, kafka, cursor='{"0": 50, "1": 3}')
    assert not result.run_requests and "no new messages" in result.skip_reason.skip_message


def test_a_corrupt_cursor_is_a_clear_error(instance, kafka):
    with pytest.raises(Exception, match="is not JSON"):
        tick(build_kafka_sensor(), instance, kafka, cursor="p0:17")


def test_a_sensor_ticks_at_its_interval_on_the_daemons_5_second_looks():
    """The daemon looks for due sensors every 5 s; a tick records when it started, a little after the
    look (measured: an interval of exactly 10 ticked every 15 s). The definitions' intervals tick on time."""
    from ch_pipeline.defs.stream import ticks_every

    def period(minimum_interval: int, looks: int = 40, late: float = 0.01) -> float:
        ticks = [late]
        for look in range(1, looks):
            if look * 5 - ticks[-1] >= minimum_interval:  # checked at the look, started a little after
                ticks.append(look * 5 + late)
        return (ticks[-1] - ticks[0]) / (len(ticks) - 1)

    assert period(10) == 15  # the bare interval
    for seconds in (5, 10, 15, 30, 60, 120):
        assert period(ticks_every(seconds)) == seconds
    from ch_pipeline.definitions import defs

    sensors = {sensor.name: sensor for sensor in defs.sensors}
    assert sensors["company_house_kafka_sensor"].minimum_interval_seconds == ticks_every(30)
