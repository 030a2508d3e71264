"""The stream watches (issue 15), end to end: events with known ``published_at`` produced to the
real broker, the Kafka sensor evaluated against a real Dagster instance, its report stored there as
the daemon stores it, and landings executed with ``dg.materialize``.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from ch_pipeline.companies_house.stream_events import generate_stream_events
from ch_pipeline.companies_house.streams import COMPANIES, STREAM_NAMES, STREAMS, kafka_key_of, stream
from ch_pipeline.defs.resources import KafkaResource, WarehouseResource
from ch_pipeline.defs.stream import build_kafka_sensor, company_house_stream, landing_run_config
from ch_pipeline.defs.streams import STREAM_LANDINGS
from ch_pipeline.defs.watch import REPLAY_WINDOW_CHECK, replay_window_check, topic_asset_key
from ch_pipeline.local_stack import LocalStack
from ch_pipeline.settings import Settings, stream_retention_hours
from ch_pipeline_tests.warehouse.messages import Message, company_event, produce

TOPIC_KEY = dg.AssetKey("company_house_topic")


@pytest.fixture
def instance():
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def kafka(broker, topic_name) -> KafkaResource:
    broker.create_topic(topic_name, 2)
    return KafkaResource(bootstrap_servers=broker.bootstrap_servers, topic=topic_name)


def hours_ago(hours: float) -> datetime:
    # Whole seconds: company_event writes published_at to the second.
    return (datetime.now(timezone.utc) - timedelta(hours=hours)).replace(microsecond=0)


def produce_published(kafka: KafkaResource, published: dict[int, list[datetime]]) -> None:
    """Companies events with the given ``published_at``s, in order, into the given Kafka partitions."""
    messages = [
        Message(partition, b"key", json.dumps(company_event(i, published_at=at)).encode(), True)
        for partition, times in published.items()
        for i, at in enumerate(times)
    ]
    produce(kafka.bootstrap_servers, kafka.topic, messages)


def tick(sensor: dg.SensorDefinition, instance, kafka, last_tick_at: float | None = None) -> dg.SensorResult:
    """One evaluation, then its asset events stored as the daemon stores them."""
    context = dg.SensorEvaluationContext(
        instance_ref=None, instance=instance, resources={"kafka": kafka}, last_tick_completion_time=last_tick_at
    )
    result = sensor(context)
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    return result


def observed(instance, key: dg.AssetKey = TOPIC_KEY) -> dict:
    (record,) = instance.fetch_observations(key, limit=10).records
    return {name: value.value for name, value in record.asset_observation.metadata.items()}


def replay_window(instance, key: dg.AssetKey = TOPIC_KEY):
    check_key = dg.AssetCheckKey(key, REPLAY_WINDOW_CHECK)
    return instance.event_log_storage.get_latest_asset_check_execution_by_key([check_key])[check_key]


def test_the_sensor_observes_the_newest_event_its_lag_and_the_window_left(instance, kafka):
    newest = hours_ago(2)
    produce_published(kafka, {0: [hours_ago(9), hours_ago(5)], 1: [hours_ago(30), hours_ago(20), newest]})
    before = time.time()
    tick(build_kafka_sensor(retention_hours=72), instance, kafka)
    after = time.time()

    metadata = observed(instance)
    assert metadata["newest_published_at"] == newest.timestamp()
    assert before - newest.timestamp() <= metadata["source_lag_seconds"] <= after - newest.timestamp() + 0.01
    assert 69.9 < metadata["replay_window_remaining_hours"] <= 70
    assert metadata["kafka_end_offsets"] == {"p0": 2, "p1": 3} and metadata["kafka_end_offset_total"] == 5
    assert before - 60 < metadata["newest_in_kafka_at"] <= after  # the Kafka timestamp: produced just now
    check = replay_window(instance)
    assert check.status.value == "SUCCEEDED" and "70.0 h left" in check.event.asset_check_evaluation.description


@pytest.mark.parametrize(
    ("age_hours", "passed", "severity"),
    [
        (47, True, None),  # 25 h of 72 left: more than a third
        (49, False, dg.AssetCheckSeverity.WARN),  # 23 h left
        (73, False, dg.AssetCheckSeverity.ERROR),  # expired: a restart would get 416
    ],
)
def test_the_replay_window_warns_with_a_third_left_and_fails_once_expired(instance, kafka, age_hours, passed, severity):
    produce_published(kafka, {0: [hours_ago(age_hours + 1), hours_ago(age_hours)]})
    result = tick(build_kafka_sensor(retention_hours=72), instance, kafka)

    (evaluation,) = [e for e in result.asset_events if isinstance(e, dg.AssetCheckEvaluation)]
    assert evaluation.asset_key == TOPIC_KEY and evaluation.check_name == REPLAY_WINDOW_CHECK
    assert evaluation.passed is passed
    if severity is not None:
        assert evaluation.severity == severity
    stored = replay_window(instance).event.asset_check_evaluation
    assert stored.passed is passed and stored.metadata["replay_window_remaining_hours"].value == pytest.approx(72 - age_hours, abs=0.05)


def test_without_time_based_retention_the_watch_reports_ages_only(instance, kafka):
    """The local stack's case: replayed events dated early 2026 never warn (CH_STREAM_RETENTION_HOURS=0)."""
    produce_published(kafka, {1: [datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)]})
    result = tick(build_kafka_sensor(retention_hours=0), instance, kafka)

    metadata = observed(instance)
    assert "replay_window_remaining_hours" not in metadata and metadata["retention_hours"] == 0
    assert metadata["source_lag_seconds"] > 24 * 3600
    (evaluation,) = [e for e in result.asset_events if isinstance(e, dg.AssetCheckEvaluation)]
    assert evaluation.passed and "no time-based retention" in evaluation.description


def test_the_local_stack_sets_no_time_based_retention(tmp_path, monkeypatch):
    monkeypatch.setenv("CH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CH_STREAM_RETENTION_HOURS", "72")  # a production value in the shell

    class Running:
        bootstrap_servers, url = "127.0.0.1:1", "http://127.0.0.1:2/companies"

    stack = LocalStack(Settings.from_env(), events=1, rate=None)
    stack.broker, stack.replay = Running(), Running()
    assert stack.env()["CH_STREAM_RETENTION_HOURS"] == "0"


def test_retention_setting(monkeypatch):
    monkeypatch.delenv("CH_STREAM_RETENTION_HOURS", raising=False)
    assert stream_retention_hours() == 72
    monkeypatch.setenv("CH_STREAM_RETENTION_HOURS", "0")
    assert stream_retention_hours() == 0
    monkeypatch.setenv("CH_STREAM_RETENTION_HOURS", "3d")
    with pytest.raises(ValueError, match="CH_STREAM_RETENTION_HOURS"):
        stream_retention_hours()


def test_the_watch_is_reported_once_per_interval_and_runs_are_still_requested(instance, kafka):
    produce_published(kafka, {0: [hours_ago(1)]})
    sensor = build_kafka_sensor(retention_hours=72, watch_interval_seconds=3600)

    now = time.time()
    same_hour = tick(sensor, instance, kafka, last_tick_at=now - now % 3600 + 0.001)
    assert same_hour.asset_events == [] and [r.run_key for r in same_hour.run_requests] == ["p0:0-0"]
    next_hour = tick(sensor, instance, kafka, last_tick_at=now - now % 3600 - 1)
    assert {type(e) for e in next_hour.asset_events} == {dg.AssetObservation, dg.AssetCheckEvaluation}


def test_an_empty_topic_is_observed_without_a_lag(instance, kafka):
    result = tick(build_kafka_sensor(retention_hours=72), instance, kafka)
    metadata = observed(instance)
    assert metadata["kafka_end_offsets"] == {"p0": 0, "p1": 0} and "source_lag_seconds" not in metadata
    assert result.skip_reason is not None and replay_window(instance).event.asset_check_evaluation.passed


def test_a_landing_records_the_messages_produced_behind_it(instance, kafka, tmp_path):
    warehouse = WarehouseResource(duckdb_path=str(tmp_path / "warehouse.duckdb"))
    produce_published(kafka, {0: [hours_ago(1)] * 40, 1: [hours_ago(1)] * 25})
    (request,) = tick(build_kafka_sensor(), instance, kafka).run_requests
    produce_published(kafka, {0: [hours_ago(0)] * 7, 1: [hours_ago(0)] * 4})  # after the tick cut its landing

    def land(key: str) -> dict:
        dg.materialize([company_house_stream], run_config=landing_run_config(key), instance=instance,
                       resources={"kafka": kafka, "warehouse": warehouse})  # fmt: skip
        event = instance.get_latest_materialization_event(company_house_stream.key).asset_materialization
        return {name: value.value for name, value in event.metadata.items()}

    first = land(request.run_key)
    assert request.run_key == "p0:0-39,p1:0-24"
    assert first["kafka_messages_behind"] == 11
    assert 0 <= first["kafka_to_warehouse_seconds"] < 120
    (catch_up,) = tick(build_kafka_sensor(), instance, kafka).run_requests  # a fresh cursor: all 76 again
    assert land(catch_up.run_key)["kafka_messages_behind"] == 0


def test_the_replay_window_check_can_be_executed_from_the_ui(instance, kafka):
    produce_published(kafka, {1: [hours_ago(60)]})
    check = replay_window_check(STREAMS[COMPANIES], retention_hours=72, timeout=5)
    defs = dg.Definitions(
        assets=[dg.AssetSpec(TOPIC_KEY)],
        asset_checks=[check],
        jobs=[dg.define_asset_job("check_now", selection=dg.AssetSelection.checks(check))],
        resources={"kafka": kafka},
    )
    result = defs.resolve_job_def("check_now").execute_in_process(instance=instance)
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.metadata["replay_window_remaining_hours"].value == pytest.approx(12, abs=0.05)


@pytest.mark.parametrize("name", [name for name in STREAM_NAMES if name != COMPANIES])
def test_every_stream_is_watched_on_its_own_topic(instance, broker, topic_name, name):
    spec = stream(name)
    broker.create_topic(topic_name, 1)
    kafka = KafkaResource(bootstrap_servers=broker.bootstrap_servers, stream_topics={name: topic_name})
    events = generate_stream_events(name, 3, first_timepoint=500)
    newest = hours_ago(3)
    events[-1]["event"]["published_at"] = newest.strftime("%Y-%m-%dT%H:%M:%S")
    produce(broker.bootstrap_servers, topic_name,
            [Message(0, kafka_key_of(spec, e).encode(), json.dumps(e).encode(), True) for e in events])  # fmt: skip

    tick(STREAM_LANDINGS[name].sensor, instance, kafka)
    metadata = observed(instance, topic_asset_key(spec))
    assert topic_asset_key(spec) == dg.AssetKey(f"{spec.default_topic}_topic")
    assert metadata["newest_published_at"] == newest.timestamp() and metadata["kafka_end_offset_total"] == len(events)
