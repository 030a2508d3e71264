"""The order of one company's events (issue 16, item 1), through the real landing and real dbt builds.

Each case of event_order.Scenario, after every batch and after a full refresh (the first-build branch),
on DuckDB and on the offline BigQuery emulator, compared with the expected names and with the Python
ground truth (events.final_companies): a company whose events sit in two Kafka partitions after the
topic grew (same second: the later timepoint wins, not the higher offset of another partition), a
deletion across partitions, a late copy of an older change across partitions (no resurrection), an
older event re-sent with a new timepoint (the newer change stays), a `published_at` in the future
(ordered as of the second it reached Kafka, so later events still apply). And a core built before the
ordering columns existed (the old table shape) keeps working: dbt appends the columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pytest

from ch_pipeline.companies_house.bulk_csv import write_sample
from ch_pipeline.defs.dbt import STREAM_MODELS, dbt_resource
from ch_pipeline.warehouse.bigquery_warehouse import BigQueryWarehouse, load_bigquery
from ch_pipeline.warehouse.duckdb_warehouse import DuckDBWarehouse
from ch_pipeline_tests.dbt.conftest import BASELINE_FILE_DATE, configure_environment, load_bulk
from ch_pipeline_tests.dbt.event_order import Scenario, landing_batch
from ch_pipeline_tests.dbt.history import parse_bulk_csv

# The table shapes the models wrote before the ordering columns existed.
OLD_CORE_COLUMNS = ["company_name", "company_number", "company_status", "date_of_creation", "postal_code",
                    "month_of_creation", "last_published_at", "last_kafka_offset"]  # fmt: skip
OLD_DELETIONS_COLUMNS = ["company_number", "deleted_published_at", "deleted_kafka_offset"]
ORDER_COLUMNS = ["last_kafka_partition", "last_timepoint", "last_order_time"]


def dbt_build(*args: str) -> None:
    """`dbt build` (models and their tests); every node must succeed."""
    invocation = dbt_resource().cli(["build", *args], raise_on_error=False)
    invocation.wait()
    results = invocation.get_artifact("run_results.json")["results"]
    assert results, "dbt ran nothing"
    assert [r["unique_id"] for r in results if r["status"] not in ("success", "pass")] == []


def core_build(*args: str) -> None:
    """`dbt build` of the companies models and their tests, every node of which must succeed: the nodes
    of ``ch_dbt_models``, what a companies build runs in production (it excludes the stream models,
    ``STREAM_MODELS``). The stream models read other landing tables; test_stream_models.py builds and
    tests them. Built here too, they were two thirds of every build's nodes (62 against 20)."""
    dbt_build(*args, "--exclude", STREAM_MODELS)


@dataclass
class Step:
    name: str
    batch: int  # the last batch landed
    names: dict[str, str | None]
    expected: dict[str, str | None]


@dataclass
class Recording:
    scenario: Scenario
    steps: list[Step] = field(default_factory=list)
    core_columns: list[str] = field(default_factory=list)
    deletions_columns: list[str] = field(default_factory=list)
    stored: dict[str, tuple] = field(default_factory=dict)  # company -> its core row's ordering fields
    old_shape_columns: list[str] = field(default_factory=list)
    future_held: tuple = ()  # F's (name, last_published_at, last_order_time) after batch 1


def query(db: Path, sql: str, params=None) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def columns(db: Path, table: str) -> list[str]:
    return [row[0] for row in query(db, f"describe {table}")]


def core_names(db: Path, numbers: list[str]) -> dict[str, str | None]:
    found = dict(query(db, "select company_number, company_name from company_house_core where company_number in "
                           f"({', '.join('?' for _ in numbers)})", numbers))  # fmt: skip
    return {n: found.get(n) for n in numbers}


def to_old_shape(db: Path) -> None:
    """Rewrite the core and the tombstones as the models before this change left them."""
    with duckdb.connect(str(db)) as con:
        con.execute(f"create or replace table company_house_core as select {', '.join(OLD_CORE_COLUMNS)} from company_house_core")
        con.execute(f"create or replace table company_house_deletions as select {', '.join(OLD_DELETIONS_COLUMNS)} from company_house_deletions")


def record_duckdb(root: Path, bulk_csv: Path, old_shape: bool) -> Recording:
    with pytest.MonkeyPatch.context() as env:
        db = configure_environment(env, root)
        load_bulk(db, bulk_csv)
        scenario = Scenario(sorted(parse_bulk_csv(bulk_csv))[100:106])
        recording = Recording(scenario)
        warehouse = DuckDBWarehouse(db)
        numbers = scenario.numbers[:6]
        for index, batch in enumerate(scenario.batches):
            warehouse.land(landing_batch(batch, f"order-{index}"))
            core_build()
            if index == 0 and old_shape:
                to_old_shape(db)
                recording.old_shape_columns = columns(db, "company_house_core")
            if index == 1 and not old_shape:
                [recording.future_held] = query(db, "select company_name, last_published_at, last_order_time "
                                                    "from company_house_core where company_number = ?", [scenario.f])  # fmt: skip
            recording.steps.append(Step(f"batch {index}", index, core_names(db, numbers), scenario.expected[index]))
        core_build("--full-refresh")
        last = len(scenario.batches) - 1
        recording.steps.append(Step("full refresh", last, core_names(db, numbers), scenario.expected[last]))
        recording.core_columns = columns(db, "company_house_core")
        recording.deletions_columns = columns(db, "company_house_deletions")
        if set(ORDER_COLUMNS) <= set(recording.core_columns):
            rows = query(db, f"select company_number, last_published_at, last_kafka_offset, {', '.join(ORDER_COLUMNS)} "
                             "from company_house_core where company_number in (?, ?)", [scenario.x, scenario.f])  # fmt: skip
            recording.stored = {number: tuple(rest) for number, *rest in rows}
    return recording


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory, bulk_csv: Path) -> Recording:
    return record_duckdb(tmp_path_factory.mktemp("event_order"), bulk_csv, old_shape=False)


@pytest.fixture(scope="module")
def old_shape_recording(tmp_path_factory: pytest.TempPathFactory, bulk_csv: Path) -> Recording:
    return record_duckdb(tmp_path_factory.mktemp("event_order_old_shape"), bulk_csv, old_shape=True)


def assert_every_step(recording: Recording) -> None:
    assert len(recording.steps) == 5
    for step in recording.steps:
        assert step.names == step.expected, f"the core differs from the expected names after {step.name}"
    for step in recording.steps:
        assert recording.scenario.truth(step.batch) == step.expected, f"the Python ground truth differs after {step.name}"


def test_the_core_follows_the_order_after_every_build_and_a_full_refresh(recording: Recording):
    assert_every_step(recording)


def test_the_same_second_across_kafka_partitions_takes_the_later_timepoint(recording: Recording):
    """The reproduction: timepoint 7 at p1:0 against timepoint 6 at p0:5 (same published_at second)."""
    scenario = recording.scenario
    first, second = [m for batch in scenario.batches[1:3] for m in batch if m.number == scenario.x]
    assert (first.published_at, first.partition) == (second.published_at, 0) and second.partition == 1
    assert second.timepoint > first.timepoint and second.offset < first.offset
    assert [step.names[scenario.x] for step in recording.steps[1:]] == ["X FIRST NAME"] + ["X SECOND NAME"] * 3


def test_the_core_stores_the_fields_that_decided(recording: Recording):
    scenario = recording.scenario
    assert recording.core_columns[-5:] == ["last_published_at", "last_kafka_offset", *ORDER_COLUMNS]
    [x_second] = [m for m in scenario.batches[2] if m.number == scenario.x]
    published_at, offset, partition, timepoint, order_time = recording.stored[scenario.x]
    assert (published_at, offset, partition, timepoint, order_time) == (
        x_second.published_at, x_second.offset, 1, x_second.timepoint, x_second.published_at
    )
    # F FROM THE FUTURE was overtaken; F NOW's own published_at is before it reached Kafka: not clamped.
    [f_now] = [m for m in scenario.batches[2] if m.number == scenario.f]
    assert recording.stored[scenario.f][:1] + recording.stored[scenario.f][3:] == (f_now.published_at, f_now.timepoint, f_now.published_at)
    assert recording.deletions_columns[-3:] == ["deleted_kafka_partition", "deleted_timepoint", "deleted_order_time"]


def test_a_future_published_at_is_ordered_as_of_the_second_it_reached_kafka(recording: Recording):
    """After batch 1 the core holds F FROM THE FUTURE (newer than F BEFORE), ordered as of its Kafka
    timestamp truncated to the second, not as of 2099."""
    name, published_at, order_time = recording.future_held
    assert name == "F FROM THE FUTURE"
    assert published_at.year == 2099
    assert order_time == recording.scenario.f_future.kafka_timestamp.replace(microsecond=0)


def test_a_core_in_the_old_shape_keeps_working(old_shape_recording: Recording, recording: Recording):
    """Built once, then rewritten without the ordering columns (as the models before them left it):
    the next build appends them (on_schema_change) and every later step is still right."""
    assert old_shape_recording.old_shape_columns == OLD_CORE_COLUMNS
    assert_every_step(old_shape_recording)
    assert old_shape_recording.core_columns == recording.core_columns
    assert old_shape_recording.deletions_columns == recording.deletions_columns


def test_the_order_on_the_bigquery_emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bigquery_emulator, bigquery_dataset):
    """The same SQL on BigQuery: built from batch 0, rewritten to the old table shape (the columns are
    appended by the next build), then the cross-partition, deletion, re-sent and future cases, then a
    full refresh."""
    for name, value in bigquery_emulator.env(bigquery_dataset).items():
        monkeypatch.setenv(name, value)
    client = bigquery_emulator.client()
    warehouse = BigQueryWarehouse(client, bigquery_emulator.project, bigquery_dataset)
    warehouse.create_stream_tables()
    # The scenario uses six of its companies; the emulator loads ~7 ms a row (1,000 rows took 8 s).
    bulk_csv = write_sample(tmp_path / "bulk.csv", rows=100, seed=9)
    load_bigquery(client, bigquery_dataset, str(bulk_csv), BASELINE_FILE_DATE, progress=lambda _: None)
    scenario = Scenario(sorted(parse_bulk_csv(bulk_csv))[10:16])
    numbers = scenario.numbers[:6]
    dataset = f"{bigquery_emulator.project}.{bigquery_dataset}"

    def names() -> dict[str, str | None]:
        rows = client.query(f"select company_number, company_name from `{dataset}.company_house_core` "
                            f"where company_number in ({', '.join(repr(n) for n in numbers)})").result()  # fmt: skip
        found = {r[0]: r[1] for r in rows}
        return {n: found.get(n) for n in numbers}

    def table_columns(table: str) -> list[str]:
        return [f.name for f in client.get_table(f"{dataset}.{table}").schema]

    for index, batch in enumerate(scenario.batches):
        warehouse.land(landing_batch(batch, f"order-{index}"))
        core_build()
        if index == 0:
            for table, old in (("company_house_core", OLD_CORE_COLUMNS), ("company_house_deletions", OLD_DELETIONS_COLUMNS)):
                client.query(f"create or replace table `{dataset}.{table}` as select {', '.join(old)} from `{dataset}.{table}`").result()
            assert table_columns("company_house_core") == OLD_CORE_COLUMNS
        assert names() == scenario.expected[index], f"after batch {index}"
    assert table_columns("company_house_core") == OLD_CORE_COLUMNS + ORDER_COLUMNS
    assert [scenario.truth(index) for index in range(4)] == scenario.expected
    core_build("--full-refresh")
    assert names() == scenario.expected[-1]
    assert table_columns("company_house_core") == OLD_CORE_COLUMNS + ORDER_COLUMNS
