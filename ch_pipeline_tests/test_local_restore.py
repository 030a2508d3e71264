"""A restarted ``ch-pipeline run`` rebuilds its in-memory topic from the landed rows, exactly.

The scenario that broke the old refill (re-producing the replay history from the first event): the
first broker's log held producer re-sends (a producer killed between delivery and checkpoint), so a
refilled log was shorter, offsets shifted, and events were never landed.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from ch_pipeline.companies_house.bulk_csv import write_sample
from ch_pipeline.companies_house.replay_server import ReplayServer
from ch_pipeline.kafka.broker import LocalBroker
from ch_pipeline.kafka.checkpoint import read_checkpoint, write_checkpoint
from ch_pipeline.local_restore import RestoreRefused, reset_instance, restore_topic
from ch_pipeline.local_stack import prepare_dagster_home
from ch_pipeline_tests.dbt.conftest import configure_environment, load_bulk
from ch_pipeline_tests.support.kafka import read_topic
from ch_pipeline_tests.reliability.harness import Pipeline

EVENTS, SEED, PARTITIONS = 120, 9, 2


def new_topic(broker: LocalBroker) -> str:
    topic = f"restore_{uuid.uuid4().hex[:10]}"
    broker.create_topic(topic, PARTITIONS)
    return topic


@pytest.fixture
def first_run(broker: LocalBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The first `ch-pipeline run`: 60 events, a producer re-send of 20, landed and built; then stopped."""
    db = configure_environment(monkeypatch, tmp_path)
    load_bulk(db, write_sample(tmp_path / "bulk.csv", 300, seed=5))
    home = prepare_dagster_home(tmp_path)
    with dg.DagsterInstance.from_config(str(home)) as instance, ReplayServer(events=EVENTS, seed=SEED, heartbeat_interval=0.2) as server:
        topic = new_topic(broker)
        pipe = Pipeline(tmp_path, broker.bootstrap_servers, topic, server, instance, db)
        pipe.produce_all(at_most=60)
        # Killed between delivery and checkpoint: the file holds an older timepoint; the restart re-sends.
        write_checkpoint(pipe.checkpoint_path, server.timepoints[40], server.url)
        pipe.produce_all(at_most=40)
        pipe.land_everything_new()
        pipe.dbt()
        old_log = {(m.partition(), m.offset()): m.value() for m in read_topic(broker.bootstrap_servers, topic, PARTITIONS)}
        yield pipe, old_log, home


def test_restart_rebuilds_every_landed_offset_and_converges_to_the_truth(broker: LocalBroker, first_run):
    pipe, old_log, home = first_run
    topic = new_topic(broker)  # the restarted broker: empty
    config = {"bootstrap.servers": broker.bootstrap_servers}
    restored = restore_topic(pipe.db, config, topic, PARTITIONS)

    new_log = {(m.partition(), m.offset()): m.value() for m in read_topic(broker.bootstrap_servers, topic, PARTITIONS)}
    assert new_log == old_log  # everything had landed: the same bytes at the same offsets
    assert restored.ends == {p: sum(1 for (q, _) in old_log if q == p) for p in range(PARTITIONS)}
    served = pipe.server.timepoints
    assert restored.resume_timepoint is not None and served[0] < restored.resume_timepoint <= served[99]

    # The second run: the producer resumes after that timepoint, the sensor from the restored ends.
    with dg.DagsterInstance.from_config(str(home)) as instance, ReplayServer(events=EVENTS, seed=SEED, heartbeat_interval=0.2) as server:
        write_checkpoint(pipe.checkpoint_path, restored.resume_timepoint, server.url)
        cursor = '{"0": %d, "1": %d}' % (restored.ends[0], restored.ends[1])
        second = Pipeline(pipe.root, broker.bootstrap_servers, topic, server, instance, pipe.db, cursor=cursor)
        second.produce_all()
        assert read_checkpoint(second.checkpoint_path, server.url) == server.timepoints[-1]
        second.land_everything_new()
        second.dbt()
        outcome = second.measure("restart")
    assert outcome.exact, outcome
    with duckdb.connect(str(pipe.db), read_only=True) as con:
        landed_timepoints = {row[0] for row in con.execute("select timepoint from company_house_stream").fetchall()}
    assert set(served) <= landed_timepoints  # every served event landed (the old refill lost 17 here)


def test_a_gap_in_the_landed_offsets_refuses_to_start(broker: LocalBroker, first_run):
    pipe, _, _ = first_run
    with duckdb.connect(str(pipe.db)) as con:
        con.execute("delete from company_house_stream where kafka_partition = 0 and kafka_offset between 3 and 5")
    topic = new_topic(broker)
    with pytest.raises(RestoreRefused, match=r"partition 0: offsets 3-5 were never landed"):
        restore_topic(pipe.db, {"bootstrap.servers": broker.bootstrap_servers}, topic, PARTITIONS)
    assert read_topic(broker.bootstrap_servers, topic, PARTITIONS) == []  # refused before producing anything


def test_nothing_landed_is_a_first_start(broker: LocalBroker, tmp_path: Path):
    assert restore_topic(tmp_path / "absent.duckdb", {"bootstrap.servers": broker.bootstrap_servers}, new_topic(broker), PARTITIONS) is None


def test_reset_instance_points_each_sensor_at_its_restored_log_and_fails_runs_left_in_flight(tmp_path: Path):
    """Companies restored to 50/0; officers had landed nothing, so its new topic is empty: its cursor
    goes back to 0 and its pending landing of the old log's offsets is canceled."""
    from dagster._core.remote_origin import RemoteInstigatorOrigin, RemoteRepositoryOrigin, GrpcServerCodeLocationOrigin
    from dagster._core.scheduler.instigation import InstigatorState, InstigatorStatus, InstigatorType, SensorInstigatorData
    from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter
    from dagster._core.storage.tags import RUN_KEY_TAG

    from ch_pipeline.companies_house.streams import STREAMS
    from ch_pipeline.defs.stream import OFFSETS_TAG

    companies, officers = STREAMS["companies"], STREAMS["officers"]

    def job(name: str):
        return dg.define_asset_job(name).resolve(asset_graph=dg.Definitions(assets=[dg.AssetSpec(name + "_asset")]).resolve_asset_graph())

    home = prepare_dagster_home(tmp_path)
    location = GrpcServerCodeLocationOrigin(host="localhost", port=1, location_name="ch_pipeline")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for sensor, cursor in ((companies.kafka_sensor, '{"0": 90, "1": 80}'), (officers.kafka_sensor, '{"0": 7, "1": 9}')):
            origin = RemoteInstigatorOrigin(RemoteRepositoryOrigin(location, "__repository__"), sensor)
            instance.add_instigator_state(InstigatorState(origin, InstigatorType.SENSOR, InstigatorStatus.RUNNING,
                                                          SensorInstigatorData(cursor=cursor)))  # fmt: skip
        instance.report_runless_asset_event(dg.AssetMaterialization("company_house_stream", metadata={"landing": "p0:0-49"}))
        landing = instance.create_run_for_job(job(companies.landing_job), tags={OFFSETS_TAG: "p0:50-89,p1:0-79"},
                                              status=DagsterRunStatus.STARTED)  # fmt: skip
        officers_landing = instance.create_run_for_job(job(officers.landing_job), tags={OFFSETS_TAG: "p0:0-6", RUN_KEY_TAG: "p0:0-6"},
                                               status=DagsterRunStatus.NOT_STARTED)  # fmt: skip
        dbt = instance.create_run_for_job(job("k"), status=DagsterRunStatus.STARTED)

    changes = reset_instance(home, {"companies": {0: 50, 1: 0}, "officers": {0: 0, 1: 0}})

    with dg.DagsterInstance.from_config(str(home)) as instance:
        cursors = {s.instigator_name: s.instigator_data.cursor for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)}
        assert cursors == {companies.kafka_sensor: '{"0": 50, "1": 0}', officers.kafka_sensor: '{"0": 0, "1": 0}'}
        assert instance.get_run_by_id(landing.run_id).status == DagsterRunStatus.CANCELED
        assert instance.get_run_by_id(officers_landing.run_id).status == DagsterRunStatus.CANCELED
        # Its key is free: the new log's first landing is p0:0-6 again, and the daemon must launch it.
        assert instance.get_runs(filters=RunsFilter(tags={RUN_KEY_TAG: "p0:0-6"})) == []
        assert instance.get_run_by_id(dbt.run_id).status == DagsterRunStatus.FAILURE  # run retries re-run it
    assert any(f"{officers.kafka_sensor} cursor" in change for change in changes)


def test_another_streams_topic_is_rebuilt_from_its_own_tables_with_the_producers_keys(broker: LocalBroker, tmp_path: Path):
    """Officers landed by the deployed landing (a reject among them): the new topic holds the same
    keys, values and offsets, and the producer resumes at the last timepoint both partitions reached."""
    from ch_pipeline.companies_house.stream_events import generate_stream_events
    from ch_pipeline.companies_house.streams import stream
    from ch_pipeline.defs.resources import WarehouseResource
    from ch_pipeline.defs.stream import build_kafka_sensor
    from ch_pipeline.defs.streams import STREAM_LANDINGS
    from ch_pipeline_tests.defs.test_streams import kafka_for, land_everything, stream_messages
    from ch_pipeline_tests.warehouse.messages import produce

    spec = stream("officers")
    topic = new_topic(broker)
    kafka = kafka_for(broker, spec.name, topic)
    warehouse = WarehouseResource(duckdb_path=str(tmp_path / "warehouse.duckdb"))
    events = generate_stream_events(spec.name, 80, seed=3)
    sent = produce(broker.bootstrap_servers, topic, stream_messages(spec.name, events))
    with dg.instance_for_test() as instance:
        sensor = build_kafka_sensor(stream=spec, job=STREAM_LANDINGS[spec.name].job)
        land_everything(spec.name, sensor, instance, kafka, warehouse)

    new = new_topic(broker)
    restored = restore_topic(Path(warehouse.duckdb_path), {"bootstrap.servers": broker.bootstrap_servers}, new, PARTITIONS, spec)

    def log(name: str) -> dict:
        return {(m.partition(), m.offset()): (m.key(), m.value()) for m in read_topic(broker.bootstrap_servers, name, PARTITIONS)}

    assert log(new) == log(topic) and len(log(new)) == len(sent)
    assert restored.ends == {p: sum(1 for (q, _) in sent if q == p) for p in range(PARTITIONS)}
    last = {p: max(e["event"]["timepoint"] for (q, _), m in sent.items() if q == p and m.valid for e in [json.loads(m.value)])
            for p in range(PARTITIONS)}  # fmt: skip
    assert restored.resume_timepoint == min(last.values())
