"""A year of landings next to a fresh instance: does what Dagster does grow with history?

The stream asset is not partitioned (docs/architecture.md §14): a landing is a run carrying its
offsets, and the instance keeps runs for ``CH_HISTORY_RETENTION_DAYS`` (default 7) and sensor ticks
per ``retention`` in dagster.yaml. After a year the instance therefore holds what it holds after a
week: the runs of the retention window (7 days x 2,880 landings at one per 30 s tick, each with its
materialization, plus as many dbt builds), while the warehouse holds the year's rows. That state is
built here directly (run records and materialization events; building it through real runs would
take days) and measured against a fresh instance, with the project's real definitions and the real
daemon code (``execute_sensor_iteration``, as ``dagster-daemon`` calls it), on SQLite storage as
``dagster dev`` uses:

- a Kafka sensor tick that finds new messages (cuts a landing, queues its run);
- an automation tick that fires (a landing after the last build) and one that does not;
- one landing run end to end (``materialize`` of ``company_house_stream`` from the real broker);
- the stream asset's page in the UI: the GraphQL queries it sends (latest materializations, asset
  node, the landing job's recent runs), through the webserver's own schema.

``python -m benchmarks.instance_scale [--days 7]`` (about 30 minutes at 7 days, most of it building the
state; not part of ``make bench``) prints the rows and writes them as a section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import dagster as dg
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from dagster._core.storage.tags import RUN_KEY_TAG, SENSOR_NAME_TAG
from dagster._core.utils import make_new_run_id

from ch_pipeline.defs.stream import OFFSETS_TAG, landing_run_config
from benchmarks.postgres_scale import DBT_MODELS, TOPIC, instance_overrides
from ch_pipeline.companies_house.streams import COMPANIES, STREAMS
from ch_pipeline.kafka.broker import LocalBroker
from ch_pipeline_tests.warehouse.messages import produce_filler

LANDINGS_PER_DAY = 24 * 3600 // 30
REPEATS = 5
COMPANIES_STREAM = STREAMS[COMPANIES]
KAFKA_SENSOR, LANDING_JOB, AUTOMATION_SENSOR = COMPANIES_STREAM.kafka_sensor, COMPANIES_STREAM.landing_job, "ch_dbt_automation"
OVERRIDES = instance_overrides(storage_url=None)  # the production run coordinator and duckdb pool, on SQLite

ASSET_PAGE_QUERY = """
query StreamAssetPage($key: AssetKeyInput!) {
  assetOrError(assetKey: $key) {
    ... on Asset {
      assetMaterializations(limit: 25) { runId timestamp metadataEntries { label } }
      definition { description jobNames opNames }
    }
  }
  assetNodes(assetKeys: [$key]) { id assetKey { path } dependedByKeys { path } }
  runsOrError(filter: {pipelineName: "LANDING_JOB"}, limit: 25) {
    ... on Runs { results { runId status tags { key value } } }
  }
}
""".replace("LANDING_JOB", LANDING_JOB)


def record_history(instance: dg.DagsterInstance, days: int) -> int:
    """The retention window's landings, as the daemon leaves them: a finished sensor run per landing
    (run key = offsets) and its materialization, and a dbt build run with its models every landing."""
    landings = days * LANDINGS_PER_DAY
    for number in range(landings):
        key = f"p9:{number * 100}-{number * 100 + 99}"  # a Kafka partition the benchmark topic does not have
        instance.add_run(DagsterRun(
            job_name=LANDING_JOB, run_id=make_new_run_id(), status=DagsterRunStatus.SUCCESS,
            tags={OFFSETS_TAG: key, RUN_KEY_TAG: key, SENSOR_NAME_TAG: KAFKA_SENSOR},
        ))  # fmt: skip
        instance.report_runless_asset_event(dg.AssetMaterialization("company_house_stream", metadata={"landing": key, "rows": 100}))
        instance.add_run(DagsterRun(job_name="__ASSET_JOB", run_id=make_new_run_id(), status=DagsterRunStatus.SUCCESS,
                                    tags={SENSOR_NAME_TAG: AUTOMATION_SENSOR}))  # fmt: skip
        for model in DBT_MODELS:
            instance.report_runless_asset_event(dg.AssetMaterialization(model))
    instance.report_runless_asset_event(dg.AssetMaterialization("company_house_bulk"))
    return landings


def sensor_ticks(instance: dg.DagsterInstance, broker: LocalBroker) -> dict[str, float]:
    """Median seconds (Dagster's own tick records) of the Kafka sensor finding messages, and of the
    automation sensor firing (a landing since the last build) and quiet (none)."""
    from dagster._core.scheduler.instigation import InstigatorType
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster._daemon.sensor import execute_sensor_iteration

    target = ModuleTarget(module_name="ch_pipeline.definitions", attribute=None, working_directory=None, location_name="ch_pipeline")
    logger = logging.getLogger("instance_scale")
    with create_test_daemon_workspace_context(target, instance) as context:
        for tick in range(2 * REPEATS):
            if tick % 2 == 0:  # a landing ended and new messages wait: both sensors have work
                produce_filler(broker.bootstrap_servers, TOPIC, {0: 100}, size=200)
                instance.report_runless_asset_event(dg.AssetMaterialization("company_house_stream", metadata={"landing": f"bench-{tick}"}))
            else:  # the automation's build started after that landing: nothing to do
                for model in DBT_MODELS:
                    instance.report_runless_asset_event(dg.AssetMaterialization(model))
            list(execute_sensor_iteration(context, logger, threadpool_executor=None, submit_threadpool_executor=None))
            time.sleep(1.1)  # CH_SENSOR_INTERVAL_SECONDS=1: the sensors are due again
        request = context.create_request_context()
        graphql = asset_page_seconds(request)
    ticks: dict[str, list] = {}
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        records = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=2 * REPEATS)
        ticks[state.instigator_name] = sorted(records, key=lambda t: t.timestamp)
    kafka = [t.end_timestamp - t.timestamp for t in ticks[KAFKA_SENSOR] if t.run_ids]
    automation = ticks[AUTOMATION_SENSOR]
    fired = [t.end_timestamp - t.timestamp for t in automation if t.requested_asset_materialization_count]
    quiet = [t.end_timestamp - t.timestamp for t in automation if not t.requested_asset_materialization_count]
    assert kafka and fired and quiet, (len(kafka), len(fired), len(quiet))
    return {
        "kafka sensor tick finding new messages": statistics.median(kafka),
        "automation tick that requests a build": statistics.median(fired),
        "automation tick with nothing to do": statistics.median(quiet),
        "stream asset page, GraphQL (materializations, asset node, recent landing runs)": graphql,
    }


def asset_page_seconds(request_context) -> float:
    from dagster_graphql.test.utils import execute_dagster_graphql

    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        result = execute_dagster_graphql(request_context, ASSET_PAGE_QUERY, variables={"key": {"path": ["company_house_stream"]}})
        times.append(time.perf_counter() - started)
        assert not result.errors, result.errors
        assert result.data["assetOrError"]["assetMaterializations"], "the page shows the landings"
    return statistics.median(times)


def landing_run_seconds(instance: dg.DagsterInstance, broker: LocalBroker, root: Path) -> float:
    from ch_pipeline.defs.resources import KafkaResource, WarehouseResource
    from ch_pipeline.defs.stream import company_house_stream

    times = []
    for attempt in range(REPEATS):
        started = time.perf_counter()
        result = dg.materialize(
            [company_house_stream], run_config=landing_run_config(f"p0:{attempt * 100}-{attempt * 100 + 99}"), instance=instance,
            resources={"kafka": KafkaResource(bootstrap_servers=broker.bootstrap_servers, topic=TOPIC),
                       "warehouse": WarehouseResource(duckdb_path=str(root / "warehouse.duckdb"))},
        )  # fmt: skip
        times.append(time.perf_counter() - started)
        assert result.success
    return statistics.median(times)


def instance_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


def measure(broker: LocalBroker, days: int, root: Path) -> tuple[dict[str, float], int, float]:
    root.mkdir(parents=True)
    with dg.instance_for_test(temp_dir=str(root), overrides=OVERRIDES) as instance:
        started = time.perf_counter()
        landings = record_history(instance, days) if days else 0
        recorded = time.perf_counter() - started
        if landings:
            print(f"  {landings:,} landings and builds recorded in {recorded:.0f}s", flush=True)
        size = instance_bytes(root)
        measures = {"one landing run, end to end (materialize, 100 messages)": landing_run_seconds(instance, broker, root / "wh")}
        measures.update(sensor_ticks(instance, broker))
    return measures, size, landings


def run(days: int = 7) -> list[dict]:
    os.environ.update(CH_SENSOR_INTERVAL_SECONDS="1", CH_WAREHOUSE="duckdb", DBT_TARGET="duckdb")
    for name in ("KAFKA_CONFIG_FILE", "KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"):
        os.environ.pop(name, None)
    with LocalBroker() as broker, tempfile.TemporaryDirectory(prefix="ch-bench-scale-") as parent:
        broker.create_topic(TOPIC, 1)
        produce_filler(broker.bootstrap_servers, TOPIC, {0: REPEATS * 100}, size=200)
        os.environ.update(KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers, KAFKA_TOPIC=TOPIC, CH_DATA_DIR=str(Path(parent) / "data"))
        print("== a fresh instance", flush=True)
        fresh, fresh_size, _ = measure(broker, 0, Path(parent) / "fresh")
        print(f"== a year: the {days}-day retention window of landings", flush=True)
        year, year_size, landings = measure(broker, days, Path(parent) / "year")
    rows = [{
        "measure": f"{name}: a year of landings ({landings:,} kept of ~{365 * LANDINGS_PER_DAY:,}; baseline: a fresh instance)",
        "ours": year[name], "baseline": fresh[name], "ratio": year[name] / fresh[name], "unit": "s (ratio: year / fresh; goal <= 1.5)",
    } for name in fresh]  # fmt: skip
    rows.append({
        "measure": f"instance size after a year (the {days}-day window; baseline: fresh)",
        "ours": year_size / 2**20, "baseline": fresh_size / 2**20, "ratio": year_size / max(fresh_size, 1), "unit": "MiB",
    })  # fmt: skip
    return rows


SECTION = "## A year of landings (instance scale)"


def render(rows: list[dict], days: int, host: str) -> str:
    from benchmarks.__main__ import _fmt

    lines = [
        SECTION, "",
        f"Generated by `python -m benchmarks.instance_scale --days {days}` (not part of `make bench`); design in "
        "docs/architecture.md §14.",
        f"Machine: {host}. Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "The year's state is built directly (run records and materializations, not real runs), so its size leaves "
        "out each real run's own event log and captured logs: about 156 KB and 4 files a run on local SQLite "
        "(`dagster dev`), some 6 GB more for the window's ~40,000 runs; it scales with CH_HISTORY_RETENTION_DAYS.", "",
        "| measure | a year | fresh | ratio | unit |", "| --- | --- | --- | --- | --- |",
        *(f"| {r['measure']} | {_fmt(r['ours'])} | {_fmt(r['baseline'])} | {_fmt(r['ratio'])} | {r['unit']} |" for r in rows),
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace this section in place, or add it before the soak section (which stays last)."""
    text = path.read_text()
    if SECTION in text:
        start = text.index(SECTION)
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + ("\n" + text[end + 1 :] if end >= 0 else "")
    elif "\n## " in text:
        at = text.index("\n## ") + 1
        text = text[:at] + section + "\n" + text[at:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


if __name__ == "__main__":
    from benchmarks.__main__ import OUTPUT, machine

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=7, help="the retention window (CH_HISTORY_RETENTION_DAYS)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    rows = run(args.days)
    for row in rows:
        print(row)
    write_section(args.output, render(rows, args.days, machine()))
    print(f"wrote the instance-scale section of {args.output}")
