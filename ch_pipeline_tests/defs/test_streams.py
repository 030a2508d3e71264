"""Every other stream, landed end to end: generated events of each kind produced to the real broker,
the stream's sensor evaluated against a real instance, its landing runs executed (``dg.materialize``
with the run config the sensor requested), and the rows checked in DuckDB against what was served.
"""

from __future__ import annotations

import json
import zlib

import dagster as dg
import duckdb
import pytest

from ch_pipeline.companies_house.stream_events import final_items, generate_stream_events
from ch_pipeline.companies_house.streams import STREAM_NAMES, field_at, item_key_of, kafka_key_of, stream
from ch_pipeline.defs.resources import KafkaResource, WarehouseResource
from ch_pipeline.defs.stream import OFFSETS_TAG, build_kafka_sensor, landing_run_config
from ch_pipeline.defs.dbt import ch_dbt_stream_models, dbt_resource
from ch_pipeline.demo_verdict import as_utc
from ch_pipeline.defs.streams import STREAM_LANDINGS
from ch_pipeline_tests.dbt.conftest import configure_environment
from ch_pipeline_tests.dbt.stream_landing import MODEL_STREAMS
from ch_pipeline_tests.warehouse.messages import Message, produce

OTHER_STREAMS = [name for name in STREAM_NAMES if name != "companies"]
PARTITIONS = 2
# Enough events that every resource kind occurs (the rarest PSC kinds are ~1% of new PSCs).
EVENTS = {"persons-with-significant-control": 1500}
BAD_VALUES = [b"{truncated", json.dumps({"resource_uri": "/company/00000001/x/y", "data": {}}).encode()]


@pytest.fixture
def instance():
    with dg.instance_for_test() as test_instance:
        yield test_instance


def kafka_for(broker, name: str, topic: str) -> KafkaResource:
    return KafkaResource(bootstrap_servers=broker.bootstrap_servers, stream_topics={name: topic})


def stream_messages(name: str, events: list[dict]) -> list[Message]:
    """The events as the producer sends them (key = ``kafka_key_of``), with a bad message between them."""
    spec = stream(name)
    messages = []
    for index, event in enumerate(events):
        key = kafka_key_of(spec, event).encode()
        messages.append(Message(zlib.crc32(key) % PARTITIONS, key, json.dumps(event).encode(), True))
        if index in (len(events) // 3, 2 * len(events) // 3):
            bad = BAD_VALUES[sum(not m.valid for m in messages)]
            messages.append(Message(index % PARTITIONS, b"bad", bad, False))
    return messages


def land_everything(name: str, sensor: dg.SensorDefinition, instance, kafka, warehouse, cursor=None) -> dg.SensorResult:
    """One sensor tick, then every landing it requested, as the daemon would run them."""
    result = sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources={"kafka": kafka}))
    asset = STREAM_LANDINGS[name].asset
    for request in result.run_requests or []:
        dg.materialize([asset], run_config=request.run_config, instance=instance, tags=request.tags,
                       resources={"kafka": kafka, "warehouse": warehouse})  # fmt: skip
    return result


def table(warehouse: WarehouseResource, name: str) -> list[dict]:
    with duckdb.connect(warehouse.duckdb_path, read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        cursor = con.execute(f"SELECT * FROM {name} ORDER BY kafka_partition, kafka_offset")
        columns = [d[0] for d in cursor.description]
        return [dict(zip(columns, row)) for row in cursor.fetchall()]


def as_text(value) -> str | None:
    if value is None or value == []:
        return None
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize("name", OTHER_STREAMS)
def test_each_stream_lands_every_served_event_once_and_its_bad_messages_as_rejects(broker, topic_name, tmp_path, instance, name, monkeypatch):
    spec = stream(name)
    broker.create_topic(topic_name, PARTITIONS)
    kafka = kafka_for(broker, name, topic_name)
    warehouse = WarehouseResource(duckdb_path=str(tmp_path / "warehouse.duckdb"))
    events = generate_stream_events(name, EVENTS.get(name, 200), seed=41)
    assert {e["resource_kind"] for e in events} == set(spec.resource_kinds), "every kind of the stream"
    sent = produce(kafka.bootstrap_servers, topic_name, stream_messages(name, events))
    job = STREAM_LANDINGS[name].job

    result = land_everything(name, build_kafka_sensor(max_batch_messages=len(sent) // 3, stream=spec, job=job),
                             instance, kafka, warehouse)  # fmt: skip
    assert len(result.run_requests) >= 3
    assert all(r.run_config == landing_run_config(r.run_key, spec.landing_table).to_config_dict() for r in result.run_requests)

    rows, rejects = table(warehouse, spec.landing_table), table(warehouse, spec.rejects_table)
    good = sorted(coordinates for coordinates, m in sent.items() if m.valid)
    assert [(r["kafka_partition"], r["kafka_offset"]) for r in rows] == good, "each served event exactly once"
    assert [(r["kafka_partition"], r["kafka_offset"]) for r in rejects] == sorted(c for c, m in sent.items() if not m.valid)
    assert {r["error"] for r in rejects} == {"not JSON", "'event' is missing or not an object"}
    for row in rows:
        event = json.loads(sent[(row["kafka_partition"], row["kafka_offset"])].value)
        assert json.loads(row["raw_event"]) == event
        assert (row["company_number"], row["item_id"]) == item_key_of(spec, event)
        assert (row["resource_kind"], row["event_type"], row["timepoint"]) == (
            event["resource_kind"], event["event"]["type"], event["event"]["timepoint"])  # fmt: skip
        assert {column: row[column] for column, _ in spec.row_fields} == {
            column: as_text(field_at(event.get("data") or {}, path)) for column, path in spec.row_fields
        }

    # The current state the dbt models will build (latest event per item by the core's order rule,
    # deletions removed) equals the ground truth of what was served.
    latest: dict = {}
    for row in rows:
        order = (row["published_at"], row["timepoint"])
        key = (row["company_number"], row["item_id"])
        if key not in latest or order >= latest[key][0]:
            latest[key] = (order, row)
    current = {key: row for key, (_, row) in latest.items() if row["event_type"] != "deleted"}
    truth = final_items(name, events)
    assert set(current) == set(truth) and any(r["event_type"] == "deleted" for r in rows)
    for key, expected in truth.items():
        assert {column: current[key][column] for column, _ in spec.row_fields} == {
            column: as_text(expected[column]) for column, _ in spec.row_fields
        }
        assert current[key]["published_at"] == as_utc(expected["published_at"])

    # And the stream's dbt model, built by Dagster over these landed rows, holds exactly those items.
    model = {stream_name: model for model, stream_name in MODEL_STREAMS.items()}[name] + "_current"
    configure_environment(monkeypatch, tmp_path)  # dbt's profile -> this warehouse file
    built = dg.materialize([ch_dbt_stream_models], selection=[model], resources={"dbt": dbt_resource()}, instance=instance)
    assert built.success
    with duckdb.connect(warehouse.duckdb_path, read_only=True) as con:
        modelled = set(con.execute(f"select company_number, item_id from {model}").fetchall())
    assert modelled == set(truth)

    # Landing the same ranges again (a re-executed run, same keys) replaces, never duplicates.
    assert all(request.tags[OFFSETS_TAG] == request.run_key for request in result.run_requests)
    land_everything(name, build_kafka_sensor(max_batch_messages=len(sent) // 3, stream=spec, job=job),
                    instance, kafka, warehouse)  # fmt: skip
    assert len(table(warehouse, spec.landing_table)) == len(rows)


def test_the_deployed_sensor_of_a_stream_requests_landings_of_its_topic_only(broker, topic_name, tmp_path, instance):
    """``company_house_officers_kafka_sensor`` as the code location serves it: new offsets of the
    officers topic become a run of its job, nothing new is a skip, later offsets a new landing."""
    from ch_pipeline.definitions import defs

    spec = stream("officers")
    broker.create_topic(topic_name, PARTITIONS)
    other_topic = topic_name + "_companies"
    broker.create_topic(other_topic, PARTITIONS)
    kafka = KafkaResource(bootstrap_servers=broker.bootstrap_servers, topic=other_topic, stream_topics={"officers": topic_name})
    warehouse = WarehouseResource(duckdb_path=str(tmp_path / "warehouse.duckdb"))
    sensor = defs.resolve_sensor_def("company_house_officers_kafka_sensor")
    assert sensor.job_name == "company_house_officers_stream_job" and sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert defs.resolve_job_def("company_house_officers_stream_job").executor_def.name == "in_process"

    events = generate_stream_events("officers", 60, seed=5)
    sent = produce(kafka.bootstrap_servers, topic_name, stream_messages("officers", events[:40]))
    produce(kafka.bootstrap_servers, other_topic, stream_messages("officers", events[:5]))  # not this sensor's topic
    first = land_everything("officers", sensor, instance, kafka, warehouse)
    (request,) = first.run_requests
    ends = {p: max(o for q, o in sent if q == p) + 1 for p in range(PARTITIONS)}
    assert json.loads(first.cursor) == {str(p): end for p, end in ends.items()}
    assert request.run_config == landing_run_config(request.run_key, spec.landing_table).to_config_dict()

    idle = land_everything("officers", sensor, instance, kafka, warehouse, cursor=first.cursor)
    assert not idle.run_requests and "no new messages in " + topic_name in idle.skip_reason.skip_message

    more = produce(kafka.bootstrap_servers, topic_name, stream_messages("officers", events[40:]))
    second = sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor, resources={"kafka": kafka}))
    (later,) = second.run_requests
    # The daemon's part: the sensor's job (landing, then the completeness check) with the request's config.
    job_defs = dg.Definitions.merge(STREAM_LANDINGS["officers"].definitions(),
                                    dg.Definitions(resources={"kafka": kafka, "warehouse": warehouse}))  # fmt: skip
    run = job_defs.resolve_job_def(sensor.job_name).execute_in_process(run_config=later.run_config, instance=instance, tags=later.tags)
    (check,) = run.get_asset_check_evaluations()
    assert run.success and check.passed and check.check_name == "timepoints_contiguous"
    assert all(f"p{p}:{ends[p]}-" in later.run_key for p in {p for p, _ in more})
    landed = {(r["kafka_partition"], r["kafka_offset"]) for r in table(warehouse, spec.landing_table)}
    assert landed == {c for c, m in {**sent, **more}.items() if m.valid}
    materialization = instance.get_latest_materialization_event(dg.AssetKey(spec.landing_table)).asset_materialization
    assert materialization.metadata["landing"].value == later.run_key
    assert materialization.metadata["rows"].value == sum(m.valid for m in more.values())


def test_the_completeness_check_passes_over_duplicates_and_names_a_missing_range(broker, topic_name, tmp_path, instance):
    """Insolvency events 1..80 with the server's duplicate re-sends land complete; then timepoints
    31-33 are withheld (lost before Kafka) and the check fails naming exactly them."""
    name, spec = "insolvency-cases", stream("insolvency-cases")
    broker.create_topic(topic_name, PARTITIONS)
    kafka = kafka_for(broker, name, topic_name)
    landing = STREAM_LANDINGS[name]

    def land_and_check(events: list[dict], warehouse: WarehouseResource) -> dg.AssetCheckEvaluation:
        sent = produce(kafka.bootstrap_servers, topic_name, stream_messages(name, events))
        ranges = ",".join(f"p{p}:{min(o for q, o in sent if q == p)}-{max(o for q, o in sent if q == p)}"
                          for p in sorted({p for p, _ in sent}))  # fmt: skip
        result = dg.materialize([landing.asset, landing.check], run_config=landing_run_config(ranges, spec.landing_table),
                                instance=instance, resources={"kafka": kafka, "warehouse": warehouse})  # fmt: skip
        (evaluation,) = result.get_asset_check_evaluations()
        return evaluation

    events = generate_stream_events(name, 80, seed=13)
    timepoints = [e["event"]["timepoint"] for e in events]
    assert len(timepoints) > len(set(timepoints)), "the generator re-sent some events"
    complete = land_and_check(events, WarehouseResource(duckdb_path=str(tmp_path / "complete.duckdb")))
    assert complete.passed and complete.description == "timepoints 1-80 all landed"

    holed = land_and_check([e for e in events if e["event"]["timepoint"] not in (31, 32, 33, 60)],
                           WarehouseResource(duckdb_path=str(tmp_path / "holed.duckdb")))  # fmt: skip
    assert not holed.passed and holed.description == "missing timepoints 31-33, 60 (of 1-80)"
    assert holed.metadata["gaps"].value == [[31, 33], [60, 60]] and holed.metadata["missing_timepoints"].value == 4
