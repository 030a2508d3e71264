"""One real pipeline run over the whole corpus, shared by the landing and dbt case tests.

Real broker (session fixture), real Dagster instance, the real sensor and real runs of
``company_house_stream``, real DuckDB, the real bulk asset and real dbt builds. Every landing case
is one Kafka message of one topic, so the cases cost one sensor tick and one run (docs/architecture.md §11: a run
costs seconds); each test then finds its case by the message's Kafka coordinates.

Sequence: bulk load -> batch 1 (every landing case + the dbt cases' first events) -> dbt build ->
batch 2 (the dbt cases' later events) -> dbt build (incremental: the MERGE path).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from confluent_kafka import Producer

from ch_pipeline.companies_house.bulk_csv import write_sample
from ch_pipeline.defs.resources import KafkaResource, WarehouseResource
from ch_pipeline.defs.stream import build_kafka_sensor, company_house_stream
from ch_pipeline.warehouse.schema import BULK_TABLE, REJECTS_TABLE, STREAM_TABLE
from ch_pipeline_tests.corpus.cases import DBT_CASES, LANDING_CASES, NEW_KAFKA_PARTITION, dbt_event_bytes
from ch_pipeline_tests.dbt.conftest import configure_environment, load_bulk

TOPIC_PARTITIONS = 3
# What an earlier tick saw: an empty topic of two partitions. Partition 2 is new to this cursor.
CURSOR_BEFORE_THE_NEW_PARTITION = '{"0": 0, "1": 0}'
DBT_KAFKA_PARTITION = 1  # all events of one company on one partition, as keyed producing does
BULK_COMPANIES = 50
# Above librdkafka's 1,000,000-byte default, so the 1 MB case can be produced (the broker accepts it).
MESSAGE_MAX_BYTES = 2 << 20

Coordinates = tuple[int, int]  # (kafka_partition, kafka_offset)


@dataclass
class CorpusRun:
    coordinates: dict[str, Coordinates]  # landing case name -> where its message landed in Kafka
    rows: dict[Coordinates, dict]  # stream table rows by coordinates
    rejects: dict[Coordinates, dict]  # rejects table rows by coordinates
    landing_metadata: list[dict]  # per landing run of batch 1
    cursor_after_batch_1: dict
    dbt_case_numbers: list[str]  # the bulk company of each dbt case
    core: dict[str, tuple] = field(default_factory=dict)  # company_number -> (name, status, postcode)
    core_after_batch_1: dict[str, tuple] = field(default_factory=dict)


def produce(bootstrap_servers: str, topic: str, messages: Sequence[tuple[int, bytes | None, bytes | None]]) -> list[Coordinates]:
    """Produce (partition, key, value) in order, idempotently; the coordinates of each, in order."""
    producer = Producer(
        {"bootstrap.servers": bootstrap_servers, "enable.idempotence": True, "acks": "all", "message.max.bytes": MESSAGE_MAX_BYTES}
    )
    delivered: dict[int, Coordinates] = {}
    failures: list[str] = []

    def on_delivery(index: int):
        def report(error, message) -> None:
            if error is not None:
                failures.append(f"message {index}: {error}")
            else:
                delivered[index] = (message.partition(), message.offset())

        return report

    for index, (partition, key, value) in enumerate(messages):
        producer.produce(topic, value=value, key=key, partition=partition, on_delivery=on_delivery(index))
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not failures, failures
    return [delivered[index] for index in range(len(messages))]


def tick_and_land(
    instance: dg.DagsterInstance, kafka: KafkaResource, warehouse: WarehouseResource, cursor: str
) -> tuple[str, list[dict]]:
    """One sensor tick, then each requested run."""
    sensor = build_kafka_sensor()
    result = sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources={"kafka": kafka}))
    assert isinstance(result, dg.SensorResult) and result.run_requests, result
    metadata = []
    for request in result.run_requests:
        run = dg.materialize(
            [company_house_stream],
            run_config=request.run_config,
            instance=instance,
            resources={"kafka": kafka, "warehouse": warehouse},
        )
        assert run.success
        (materialization,) = run.asset_materializations_for_node("company_house_stream")
        metadata.append({name: value.value for name, value in materialization.metadata.items()})
    return result.cursor, metadata


def run_dbt(instance: dg.DagsterInstance) -> None:
    from ch_pipeline.defs.dbt import ch_dbt_models, dbt_resource

    assert dg.materialize([ch_dbt_models], resources={"dbt": dbt_resource()}, instance=instance).success


def read_by_coordinates(db: Path, table: str) -> dict[Coordinates, dict]:
    with duckdb.connect(str(db), read_only=True) as con:
        cursor = con.execute(f"SELECT * FROM {table}")
        names = [column[0] for column in cursor.description]
        return {(row["kafka_partition"], row["kafka_offset"]): row for row in (dict(zip(names, r)) for r in cursor.fetchall())}


def read_core(db: Path) -> dict[str, tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT company_number, company_name, company_status, postal_code FROM company_house_core").fetchall()
    return {number: tuple(rest) for number, *rest in rows}


def dbt_batch(run_numbers: list[str], batch: int, first_timepoint: int) -> list[tuple[int, bytes, bytes]]:
    messages = []
    for case, number in zip(DBT_CASES, run_numbers):
        for fields in case.batch_1 if batch == 1 else case.batch_2:
            value = dbt_event_bytes(number, fields, first_timepoint + len(messages))
            messages.append((DBT_KAFKA_PARTITION, number.encode(), value))
    return messages


@pytest.fixture(scope="session")
def corpus_run(broker, tmp_path_factory: pytest.TempPathFactory) -> CorpusRun:
    root = tmp_path_factory.mktemp("corpus")
    topic = "corpus_" + root.name.replace("-", "_")
    broker.create_topic(topic, TOPIC_PARTITIONS)
    kafka = KafkaResource(bootstrap_servers=broker.bootstrap_servers, topic=topic)
    # Environment only while the pipeline runs (dbt is a subprocess that reads CH_DUCKDB_PATH).
    with pytest.MonkeyPatch.context() as env, dg.instance_for_test() as instance:
        db = configure_environment(env, root)
        warehouse = WarehouseResource(duckdb_path=str(db))
        load_bulk(db, write_sample(root / "bulk.csv", BULK_COMPANIES, seed=11), instance)
        with duckdb.connect(str(db), read_only=True) as con:
            bulk_numbers = [n for (n,) in con.execute(f"SELECT company_number FROM {BULK_TABLE} ORDER BY 1").fetchall()]
        numbers = bulk_numbers[: len(DBT_CASES)]

        landing = [(case.partition, case.message_key, case.value) for case in LANDING_CASES]
        placed = produce(kafka.bootstrap_servers, topic, landing + dbt_batch(numbers, 1, 5000))
        cursor, metadata = tick_and_land(instance, kafka, warehouse, CURSOR_BEFORE_THE_NEW_PARTITION)
        run_dbt(instance)
        core_after_batch_1 = read_core(db)

        produce(kafka.bootstrap_servers, topic, dbt_batch(numbers, 2, 6000))
        tick_and_land(instance, kafka, warehouse, cursor)
        run_dbt(instance)

        return CorpusRun(
            coordinates={case.name: placed[i] for i, case in enumerate(LANDING_CASES)},
            rows=read_by_coordinates(db, STREAM_TABLE),
            rejects=read_by_coordinates(db, REJECTS_TABLE),
            landing_metadata=metadata,
            cursor_after_batch_1=json.loads(cursor),
            dbt_case_numbers=numbers,
            core=read_core(db),
            core_after_batch_1=core_after_batch_1,
        )

