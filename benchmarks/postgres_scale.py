"""Sensor ticks on Postgres storage (production) next to SQLite (local), with 1k and 10k landings.

Each case is a fresh instance with the production run coordinator (QueuedRunCoordinator) holding N
landings (materializations of ``company_house_stream``, each naming its offsets) and a dbt build
older than the last of them. The real daemon code (``execute_sensor_iteration``) then ticks the
project's two sensors through a gRPC code location, as ``dagster-daemon`` does: the Kafka sensor
finds 100 new messages each tick (cuts a landing, queues its run) and the automation sensor
evaluates the dbt models' condition. A tick's time is Dagster's own (its tick record's start to
end); the median of 3 ticks per sensor is reported.

Postgres runs in a throwaway cluster (``ch_pipeline.production_stack.PostgresCluster``, needs
postgresql-15), on this machine like SQLite, so the difference is the storage, not a network.

``python -m benchmarks.postgres_scale [--partitions 1000 10000]``
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import dagster as dg

from ch_pipeline.companies_house.streams import COMPANIES, STREAMS
from ch_pipeline.kafka.broker import LocalBroker
from ch_pipeline.production_stack import PostgresCluster
from ch_pipeline_tests.warehouse.messages import produce_filler

TOPIC = "company_house"
TICKS = 3
SENSORS = (STREAMS[COMPANIES].kafka_sensor, "ch_dbt_automation")
DBT_MODELS = ("snapshot_streamed_data", "company_house_deletions", "company_house_core", "get_last_timestamp")


def instance_overrides(storage_url: str | None) -> dict:
    overrides: dict = {
        "run_coordinator": {"module": "dagster.core.run_coordinator", "class": "QueuedRunCoordinator"},
        "concurrency": {"pools": {"default_limit": 1, "granularity": "op"}},
        "telemetry": {"enabled": False},
    }
    if storage_url:
        overrides["storage"] = {"postgres": {"postgres_url": storage_url}}
    return overrides


def populate(instance: dg.DagsterInstance, partitions: int) -> None:
    """N landings (offset ranges of a Kafka partition the topic does not have, so the sensor's own
    keys never collide), the bulk table and a dbt build, then one more landing."""
    keys = [f"p9:{i * 100}-{i * 100 + 99}" for i in range(partitions + 1)]
    for key in keys[:-1]:
        instance.report_runless_asset_event(dg.AssetMaterialization("company_house_stream", metadata={"landing": key}))
    for asset in ("company_house_bulk", *DBT_MODELS):
        instance.report_runless_asset_event(dg.AssetMaterialization(asset))
    instance.report_runless_asset_event(dg.AssetMaterialization("company_house_stream", metadata={"landing": keys[-1]}))


def tick_seconds(instance: dg.DagsterInstance, broker: LocalBroker) -> dict[str, list[float]]:
    from dagster._core.scheduler.instigation import InstigatorType
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster._daemon.sensor import execute_sensor_iteration

    target = ModuleTarget(module_name="ch_pipeline.definitions", attribute=None, working_directory=None, location_name="ch_pipeline")
    logger = logging.getLogger("postgres_scale")
    with create_test_daemon_workspace_context(target, instance) as context:
        for tick in range(TICKS):
            produce_filler(broker.bootstrap_servers, TOPIC, {0: 100}, size=200)
            list(execute_sensor_iteration(context, logger, threadpool_executor=None, submit_threadpool_executor=None))
            time.sleep(1.1)  # CH_SENSOR_INTERVAL_SECONDS=1: both sensors are due again
    seconds: dict[str, list[float]] = {}
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=TICKS)
        seconds[state.instigator_name] = [t.end_timestamp - t.timestamp for t in ticks if t.end_timestamp]
    return seconds


def measure(storage_url: str | None, partitions: int, root: Path) -> dict[str, float]:
    with LocalBroker() as broker:
        broker.create_topic(TOPIC, 1)
        os.environ.update(KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers, KAFKA_TOPIC=TOPIC)
        with dg.instance_for_test(temp_dir=str(root), overrides=instance_overrides(storage_url)) as instance:
            started = time.perf_counter()
            populate(instance, partitions)
            recorded = time.perf_counter() - started
            print(f"  {partitions:,} partitions recorded in {recorded:.0f}s", flush=True)
            seconds = tick_seconds(instance, broker)
            queued = len(instance.get_runs())
    assert all(len(seconds.get(name, [])) == TICKS for name in SENSORS), seconds
    assert queued >= TICKS, f"the Kafka sensor queued {queued} runs in {TICKS} ticks"
    return {"record": recorded * 1000 / partitions, **{name: statistics.median(values) for name, values in seconds.items()}}


def run(partition_counts: tuple[int, ...] = (1_000, 10_000)) -> list[dict]:
    os.environ.update(CH_SENSOR_INTERVAL_SECONDS="1", CH_WAREHOUSE="duckdb", DBT_TARGET="duckdb")
    for name in ("KAFKA_CONFIG_FILE", "KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"):
        os.environ.pop(name, None)
    parent = Path(tempfile.mkdtemp(prefix="ch-bench-pg-"))
    parent.chmod(0o711)  # the cluster's directory belongs to the Postgres user
    rows = []
    try:
        os.environ["CH_DATA_DIR"] = str(parent / "data")
        with PostgresCluster(parent / "cluster", "dagster", secrets.token_hex(16), "dagster") as cluster:
            import psycopg2

            for partitions in partition_counts:
                database = f"bench_{partitions}"
                connection = psycopg2.connect(host="127.0.0.1", port=cluster.port, user=cluster.user, password=cluster.password, dbname="postgres")
                connection.autocommit = True
                connection.cursor().execute(f"create database {database}")
                connection.close()
                url = f"postgresql+psycopg2://{cluster.user}:{cluster.password}@127.0.0.1:{cluster.port}/{database}"
                print(f"== postgres, {partitions:,} partitions", flush=True)
                postgres = measure(url, partitions, Path(tempfile.mkdtemp(dir=parent)))
                print(f"== sqlite, {partitions:,} partitions", flush=True)
                sqlite = measure(None, partitions, Path(tempfile.mkdtemp(dir=parent)))
                rows.append({
                    "measure": f"record a landed stream partition (dynamic partition + materialization), {partitions:,} partitions",
                    "ours": postgres["record"],
                    "baseline": sqlite["record"],
                    "ratio": sqlite["record"] / postgres["record"],
                    "unit": "ms per partition (ours: Postgres storage; baseline: SQLite storage)",
                })  # fmt: skip
                for sensor in SENSORS:
                    rows.append({
                        "measure": f"{sensor} tick, {partitions:,} stream partitions materialized (median of {TICKS})",
                        "ours": postgres[sensor],
                        "baseline": sqlite[sensor],
                        "ratio": sqlite[sensor] / postgres[sensor],
                        "unit": "s (ours: Postgres storage; baseline: SQLite storage)",
                    })  # fmt: skip
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--partitions", type=int, nargs="+", default=[1_000, 10_000])
    for row in run(tuple(parser.parse_args().partitions)):
        print(row)
