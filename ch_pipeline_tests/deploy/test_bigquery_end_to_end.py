"""The production path on the offline BigQuery emulator: same events, same core as DuckDB and as the ground truth.

The generated history of the dbt tests (five stream batches over a bulk baseline, with the cases
the tutorial got wrong) is landed batch by batch through our warehouse implementations
(``BigQueryWarehouse.land``, and ``DuckDBWarehouse.land`` alike), and the real dbt assets run
(``dg.materialize`` of ``ch_dbt_models``; dbt-bigquery against the emulator). After every
incremental step the BigQuery core equals the Python ground truth of the DuckDB dbt tests; at the
end dbt on DuckDB, over the same landings, gives the same core and the same watermark.
The bulk baseline goes through the production BigQuery bulk load (``load_bigquery``: CSV load job
into a staging table, then the cleaning query).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest

from ch_pipeline.companies_house.bulk_csv import SAMPLE_FILE_DATE, write_sample
from ch_pipeline.defs.bulk import company_house_bulk
from ch_pipeline.defs.dbt import ch_dbt_models, dbt_resource
from ch_pipeline.defs.resources import WarehouseResource
from ch_pipeline.kafka.offsets import OffsetRange, format_partition_key
from ch_pipeline.warehouse.bigquery_warehouse import load_bigquery
from ch_pipeline.warehouse.duckdb_warehouse import connect, create_stream_tables
from ch_pipeline.warehouse.landing import LandingBatch
from ch_pipeline.warehouse.schema import BULK_TABLE, REJECT_COLUMNS, STREAM_COLUMNS, arrow_schema
from ch_pipeline_tests.bigquery_emulator import BigQueryEmulator
from ch_pipeline_tests.dbt.history import Event, History, expected_core, parse_bulk_csv, read_core, read_watermark

# Enough for the history (its first batch changes or deletes 530 bulk companies); the emulator loads
# ~7 ms a row, so each thousand more cost ~7 s.
BULK_COMPANIES = 1_000
CORE_COLUMNS = "company_number, company_name, company_status, date_of_creation, postal_code, month_of_creation"


@pytest.fixture(scope="module")
def bulk_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample(tmp_path_factory.mktemp("bulk") / "BasicCompanyDataAsOneFile-e2e.csv", BULK_COMPANIES, seed=3)


@pytest.fixture
def warehouses(bigquery_emulator: BigQueryEmulator, bigquery_dataset: str, tmp_path: Path, monkeypatch):
    """The BigQuery (emulator) and DuckDB warehouses, with the dbt profile's two targets pointed at them."""
    duckdb_path = tmp_path / "warehouse.duckdb"
    for name, value in bigquery_emulator.env(bigquery_dataset).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CH_DUCKDB_PATH", str(duckdb_path))
    monkeypatch.delenv("CH_BULK_CSV", raising=False)
    bigquery = WarehouseResource(
        kind="bigquery",
        gcp_project=bigquery_emulator.project,
        bigquery_dataset=bigquery_dataset,
        bigquery_location=bigquery_emulator.location,
        bigquery_api_endpoint=bigquery_emulator.endpoint,
    )
    return bigquery, WarehouseResource(kind="duckdb", duckdb_path=str(duckdb_path))


def stream_row(event: Event, stream_partition: str, now: datetime) -> dict:
    """The row the stream asset writes for an event (as ch_pipeline_tests/dbt/history.land does)."""
    return {
        "company_name": event.company_name,
        "company_number": event.company_number,
        "company_status": event.company_status,
        "date_of_creation": event.date_of_creation,
        "postal_code": event.postal_code,
        "published_at": event.published_at,
        "event_type": event.event_type,
        "timepoint": None,
        "resource_kind": event.resource_kind,
        "kafka_partition": event.kafka_partition,
        "kafka_offset": event.kafka_offset,
        "kafka_timestamp": now,
        "stream_partition": stream_partition,
        "ingested_at": now,
        "raw_event": json.dumps({"resource_kind": event.resource_kind, "company_number": event.company_number}),
    }


def landing_batches(events: list[Event]) -> list[LandingBatch]:
    """The stream partitions these events land in: one per contiguous offset run of a Kafka partition."""
    runs: list[list[Event]] = []
    for event in sorted(events, key=lambda e: (e.kafka_partition, e.kafka_offset)):
        last = runs[-1][-1] if runs else None
        if last and last.kafka_partition == event.kafka_partition and last.kafka_offset + 1 == event.kafka_offset:
            runs[-1].append(event)
        else:
            runs.append([event])
    now = datetime.now(timezone.utc)
    batches = []
    for run in runs:
        ranges = [OffsetRange(run[0].kafka_partition, run[0].kafka_offset, run[-1].kafka_offset)]
        key = format_partition_key(ranges)
        rows = pa.Table.from_pylist([stream_row(e, key, now) for e in run], schema=arrow_schema(STREAM_COLUMNS))
        batches.append(LandingBatch(key, ranges, rows, arrow_schema(REJECT_COLUMNS).empty_table()))
    return batches


def run_dbt(target: str, instance: dg.DagsterInstance, monkeypatch) -> None:
    monkeypatch.setenv("DBT_TARGET", target)
    result = dg.materialize([ch_dbt_models], resources={"dbt": dbt_resource()}, instance=instance)
    assert result.success, target
    failed = [e.check_name for e in result.get_asset_check_evaluations() if not e.passed]
    assert failed == [], f"dbt tests failed on {target}: {failed}"


def bigquery_core(warehouse: WarehouseResource) -> dict[str, tuple]:
    client = warehouse.bigquery_client()
    rows = client.query(f"SELECT {CORE_COLUMNS} FROM `{warehouse.bigquery_dataset}.company_house_core`").result()
    return {row[0]: tuple(row.values())[1:] for row in rows}


def bigquery_watermark(warehouse: WarehouseResource) -> dict[int, int]:
    client = warehouse.bigquery_client()
    rows = client.query(f"SELECT kafka_partition, last_offset FROM `{warehouse.bigquery_dataset}.get_last_timestamp`").result()
    return {row[0]: row[1] for row in rows}


def test_core_on_the_bigquery_emulator_equals_the_ground_truth_and_duckdb(warehouses, bulk_csv, monkeypatch):
    bigquery, duckdb = warehouses
    duckdb_path = Path(duckdb.duckdb_path)
    bulk = parse_bulk_csv(bulk_csv)
    instance = dg.DagsterInstance.ephemeral()

    # Baseline: the real bulk asset on DuckDB; the same file through the BigQuery bulk load on the emulator.
    loaded = dg.materialize(
        [company_house_bulk],
        resources={"warehouse": duckdb},
        run_config={"ops": {BULK_TABLE: {"config": {"source": str(bulk_csv)}}}},
        partition_key=SAMPLE_FILE_DATE.isoformat(),
        instance=instance,
    )
    assert loaded.success
    load_bigquery(bigquery.bigquery_client(), bigquery.bigquery_dataset, str(bulk_csv), SAMPLE_FILE_DATE)
    bigquery.warehouse().create_stream_tables()
    with connect(duckdb_path) as con:
        create_stream_tables(con)

    # No stream data yet: the core is the bulk snapshot.
    run_dbt("bigquery", instance, monkeypatch)
    assert bigquery_core(bigquery) == bulk

    # dbt runs on BigQuery after every step (each step a separate incremental run); batches 4 and 5
    # share one (batch 4 alone holds no company event). DuckDB gets the same landings.
    history = History(bulk)
    steps = [[history.batch_1], [history.batch_2], [history.batch_3], [history.batch_4, history.batch_5]]
    for number, step in enumerate(steps, start=1):
        events = [event for make_batch in step for event in make_batch()]
        if history.batch_5 in step:
            events += history.late_range  # offsets batch 3 skipped, landing after the watermark passed them
        for batch in landing_batches(events):
            bigquery.warehouse().land(batch)
            duckdb.warehouse().land(batch)
        history.log.landed.extend(events)

        run_dbt("bigquery", instance, monkeypatch)
        assert bigquery_core(bigquery) == expected_core(bulk, history.log.landed), f"BigQuery core differs from the ground truth after step {number}"

    # The same landings through dbt on DuckDB: the same core, the same watermark.
    run_dbt("duckdb", instance, monkeypatch)
    assert read_core(duckdb_path) == bigquery_core(bigquery)
    assert read_watermark(duckdb_path) == bigquery_watermark(bigquery) == {
        p: max(e.kafka_offset for e in history.log.landed if e.kafka_partition == p) for p in (0, 1)
    }
