"""`dbt build --full-refresh` (the README's way to bring in a new monthly bulk file) and the watermark.

The core's first-build branch reads the whole stream table, so after a full refresh the watermark must
cover all of it: per Kafka partition never emptier nor lower than before, equal to the stream table's
highest offset, and visible to the never_decreases test; the next incremental build then applies only
what landed after it. A full refresh that leaves the core out must not move the watermark at all.

Real DuckDB, the real bulk asset, real dbt: the incremental builds through the Dagster dbt assets (as in
production), the full refreshes by the dbt CLI (as the README says). The history runs once per module;
each test asserts one property of it. The last test runs the same on the offline BigQuery emulator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from ch_pipeline.companies_house.bulk_csv import write_sample
from ch_pipeline.defs.dbt import STREAM_MODELS, ch_dbt_models, dbt_resource
from ch_pipeline.warehouse.bigquery_warehouse import BigQueryWarehouse, load_bigquery
from ch_pipeline_tests.dbt.conftest import BASELINE_FILE_DATE, configure_environment, load_bulk
from ch_pipeline_tests.dbt.history import (
    CoreRow,
    History,
    create_stream_table,
    expected_core,
    land,
    parse_bulk_csv,
    read_core,
    read_watermark,
)
from ch_pipeline_tests.dbt.test_bigquery import land_on_bigquery
from ch_pipeline_tests.dbt.test_bigquery import read_core as bigquery_core

FULL_REFRESH = "full refresh"
FULL_REFRESH_OF_THE_WATERMARK_ALONE = "full refresh of the watermark alone"
BUILD = "build"


@dataclass
class Step:
    name: str
    kind: str  # BUILD, FULL_REFRESH or FULL_REFRESH_OF_THE_WATERMARK_ALONE
    watermark_before: dict[int, int]
    watermark: dict[int, int]
    previous_last_offset: dict[int, int | None]
    stream_max_offset: dict[int, int]
    snapshot_rows: int
    core: dict[str, CoreRow]
    expected: dict[str, CoreRow]
    failed: list[str]


@dataclass
class Recording:
    history: History
    steps: list[Step] = field(default_factory=list)

    def step(self, name: str) -> Step:
        [step] = [s for s in self.steps if s.name == name]
        return step


def query(db: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


def watermark_if_built(db: Path) -> dict[int, int]:
    exists = query(db, "select count(*) from information_schema.tables where table_name = 'get_last_timestamp'")[0][0]
    return read_watermark(db) if exists else {}


def build(instance: dg.DagsterInstance) -> list[str]:
    """The production path: `dbt build` of the four models through the Dagster dbt assets."""
    result = dg.materialize([ch_dbt_models], resources={"dbt": dbt_resource()}, instance=instance)
    assert result.success
    return [e.check_name for e in result.get_asset_check_evaluations() if not e.passed]


def dbt_cli(*args: str, whole_project: bool = False) -> list[str]:
    """`dbt build <args>` by hand; returns the nodes (models, tests) that did not succeed. Over the nodes
    of ``ch_dbt_models`` (the companies models and their tests), unless ``whole_project`` (the README's
    command as typed): the stream models read other landing tables, test_stream_models.py builds them."""
    exclude = [] if whole_project else ["--exclude", STREAM_MODELS]
    invocation = dbt_resource().cli(["build", *args, *exclude], raise_on_error=False)
    invocation.wait()
    results = invocation.get_artifact("run_results.json")["results"]
    assert results, "dbt ran nothing"
    return [r["unique_id"] for r in results if r["status"] not in ("success", "pass")]


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory, bulk_csv: Path) -> Recording:
    root = tmp_path_factory.mktemp("full_refresh")
    with pytest.MonkeyPatch.context() as env, dg.instance_for_test() as instance:
        db = configure_environment(env, root)
        create_stream_table(db)
        load_bulk(db, bulk_csv, instance)
        bulk = parse_bulk_csv(bulk_csv)
        history = History(bulk, seed=11)
        recording = Recording(history)

        def land_batch(number: int, events: list) -> None:
            land(db, events, stream_partition=f"batch-{number}")
            history.log.landed.extend(events)

        def record(name: str, kind: str, run) -> None:
            before = watermark_if_built(db)
            failed = run()
            recording.steps.append(
                Step(
                    name, kind, before, read_watermark(db),
                    dict(query(db, "select kafka_partition, previous_last_offset from get_last_timestamp")),
                    dict(query(db, "select kafka_partition, max(kafka_offset) from company_house_stream group by 1")),
                    query(db, "select count(*) from snapshot_streamed_data")[0][0],
                    read_core(db), expected_core(bulk, history.log.landed), failed,
                )
            )  # fmt: skip

        batch_1 = history.batch_1()
        land_batch(1, batch_1)
        record("batch 1", BUILD, lambda: build(instance))
        land_batch(2, history.batch_2())
        record("batch 2", BUILD, lambda: build(instance))

        # Nothing landed since the last build: the full refresh must leave the watermark as it was,
        record("full refresh, nothing new", FULL_REFRESH, lambda: dbt_cli("--full-refresh", whole_project=True))
        # and the next build must find nothing to apply.
        record("build after a full refresh", BUILD, lambda: build(instance))

        # New rows landed, and batch 1 landed again (lower offsets, newer ingested_at): the rebuilt core
        # reads them all, so the watermark must cover them, and not go back to batch 1's offsets.
        land_batch(3, history.batch_3())  # reserves offsets in partition 0 that land late (batch 5)
        land(db, batch_1, stream_partition="batch-1")
        record("full refresh, new rows and a re-landed range", FULL_REFRESH, lambda: dbt_cli("--full-refresh"))

        # Only other resource kinds landed (no company-profile event), at the highest offsets: the
        # rebuilt core read them too.
        land_batch(4, history.batch_4())
        record("full refresh, other resource kinds only", FULL_REFRESH, lambda: dbt_cli("--full-refresh"))

        # New rows (some of them below the watermark's offsets: the late range), then a full refresh
        # that leaves the core out: the core did not read them, so the watermark must not claim them.
        land_batch(5, history.batch_5() + history.late_range)
        record(
            FULL_REFRESH_OF_THE_WATERMARK_ALONE, FULL_REFRESH_OF_THE_WATERMARK_ALONE,
            lambda: dbt_cli("--full-refresh", "--select", "get_last_timestamp"),
        )  # fmt: skip
        record("build after batch 5", BUILD, lambda: build(instance))
        record("build, nothing new", BUILD, lambda: build(instance))
    return recording


def full_refreshes(recording: Recording) -> list[Step]:
    steps = [s for s in recording.steps if s.kind == FULL_REFRESH]
    assert len(steps) == 3
    return steps


def test_a_full_refresh_never_empties_nor_lowers_the_watermark(recording: Recording):
    for step in full_refreshes(recording):
        assert step.watermark_before, step.name
        for partition, offset in step.watermark_before.items():
            assert step.watermark.get(partition, -1) >= offset, f"the watermark of partition {partition} went back at {step.name}"


def test_a_full_refresh_covers_the_whole_stream_table_the_core_read(recording: Recording):
    for step in full_refreshes(recording):
        assert step.watermark == step.stream_max_offset, step.name
    # Batch 4 holds no company-profile event, yet the rebuilt core read it: the watermark covers it.
    step = recording.step("full refresh, other resource kinds only")
    assert step.watermark != step.watermark_before


def test_never_decreases_sees_a_full_refresh(recording: Recording):
    """previous_last_offset survives the rebuild, so the dbt test compares with the replaced watermark."""
    for step in full_refreshes(recording):
        assert step.previous_last_offset == step.watermark_before, step.name


def test_a_full_refresh_that_leaves_the_core_out_claims_nothing_it_did_not_read(recording: Recording):
    step = recording.step(FULL_REFRESH_OF_THE_WATERMARK_ALONE)
    assert step.watermark == step.watermark_before
    assert any(step.stream_max_offset[p] > offset for p, offset in step.watermark.items()), "batch 5 landed past it"


def test_the_next_build_applies_only_what_landed_after_the_full_refresh(recording: Recording):
    # Nothing landed: nothing is read again.
    assert recording.step("build after a full refresh").snapshot_rows == 0
    assert recording.step("build after a full refresh").watermark == recording.step("full refresh, nothing new").watermark
    # Batch 5 and the late range (below the watermark's offsets, landed after it) are applied, no more.
    after = recording.step("build after batch 5")
    late = {e.company_number for e in recording.history.late_range}
    assert late and after.snapshot_rows >= len(late)
    assert all(after.core.get(n) == after.expected.get(n) for n in late)
    assert after.watermark == after.stream_max_offset
    assert recording.step("build, nothing new").snapshot_rows == 0


def test_the_core_equals_the_ground_truth_after_every_step(recording: Recording):
    assert len(recording.steps) == 9
    for step in recording.steps:
        if step.kind == FULL_REFRESH_OF_THE_WATERMARK_ALONE:
            continue  # the core was not built: batch 5 is not in it yet
        assert step.core == step.expected, f"core differs from the ground truth after {step.name}"


def test_every_dbt_test_passes_at_every_step(recording: Recording):
    for step in recording.steps:
        assert step.failed == [], step.name


def test_a_full_refresh_keeps_the_watermark_on_the_bigquery_emulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bigquery_emulator, bigquery_dataset
):
    """The same SQL on BigQuery: the rebuild reads the table it replaces (CREATE OR REPLACE ... AS)."""
    for name, value in bigquery_emulator.env(bigquery_dataset).items():
        monkeypatch.setenv(name, value)
    client = bigquery_emulator.client()
    warehouse = BigQueryWarehouse(client, bigquery_emulator.project, bigquery_dataset)
    warehouse.create_stream_tables()
    bulk_csv = write_sample(tmp_path / "bulk.csv", rows=1_000, seed=5)
    load_bigquery(client, bigquery_dataset, str(bulk_csv), BASELINE_FILE_DATE, progress=lambda _: None)
    bulk = parse_bulk_csv(bulk_csv)
    dataset = f"{bigquery_emulator.project}.{bigquery_dataset}"
    history = History(bulk, seed=5)

    def rows(sql: str) -> dict:
        return {r[0]: r[1] for r in client.query(sql).result()}

    def watermark() -> dict[int, int]:
        return rows(f"select kafka_partition, last_offset from `{dataset}.get_last_timestamp`")

    def stream_max_offset() -> dict[int, int]:
        return rows(f"select kafka_partition, max(kafka_offset) from `{dataset}.company_house_stream` group by kafka_partition")

    def land_batch(number: int, events: list) -> None:
        land_on_bigquery(warehouse, events, f"batch-{number}")
        history.log.landed.extend(events)

    land_batch(1, history.batch_1())
    assert dbt_cli() == []
    land_batch(2, history.batch_2())
    before = watermark()
    assert dbt_cli("--full-refresh") == []  # new rows landed
    assert watermark() == stream_max_offset() and all(watermark()[p] >= o for p, o in before.items())
    assert rows(f"select kafka_partition, previous_last_offset from `{dataset}.get_last_timestamp`") == before
    before = watermark()
    assert dbt_cli("--full-refresh") == []  # nothing new
    assert watermark() == before
    land_batch(3, history.batch_3())
    assert dbt_cli() == []
    assert watermark() == stream_max_offset()
    assert bigquery_core(client, f"{dataset}.company_house_core") == expected_core(bulk, history.log.landed)
