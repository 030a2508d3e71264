"""The dbt project on its BigQuery target, offline: `dbt parse`, then real `dbt build`s through the
dbt assets against the BigQuery emulator, compared with the same Python ground truth as on DuckDB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from ch_pipeline.companies_house.bulk_csv import write_sample
from ch_pipeline.defs.dbt import DBT_PROJECT_DIR, ch_dbt_models, dbt_resource
from ch_pipeline.kafka.offsets import OffsetRange
from ch_pipeline.warehouse.bigquery_warehouse import BigQueryWarehouse, load_bigquery
from ch_pipeline.warehouse.landing import LandingBatch
from ch_pipeline.warehouse.schema import REJECT_COLUMNS, arrow_schema
from ch_pipeline_tests.dbt.conftest import BASELINE_FILE_DATE, STREAM_DBT_MODELS
from ch_pipeline_tests.dbt.history import History, expected_core, parse_bulk_csv, stream_rows

MODELS = {"snapshot_streamed_data", "company_house_deletions", "company_house_core", "get_last_timestamp", "company_house_bulk_reconciliations"}


def test_dbt_parses_for_bigquery_without_network_or_credentials(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "BIGQUERY_", "GCP_"))}
    env["DBT_TARGET"] = "bigquery"
    dbt = str(Path(sys.executable).parent / "dbt")
    subprocess.run(
        [dbt, "parse", "--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR),
         "--target-path", str(tmp_path), "--no-partial-parse", "--quiet"],
        env=env, check=True,
    )  # fmt: skip
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["metadata"]["adapter_type"] == "bigquery"
    assert {n["name"] for n in manifest["nodes"].values() if n["resource_type"] == "model"} == MODELS | STREAM_DBT_MODELS


def land_on_bigquery(warehouse: BigQueryWarehouse, events, stream_partition: str) -> None:
    """Through the stream engineer's real BigQuery landing (CSV load job + MERGE)."""
    ranges = []
    for partition in sorted({e.kafka_partition for e in events}):
        offsets = [e.kafka_offset for e in events if e.kafka_partition == partition]
        ranges.append(OffsetRange(partition, min(offsets), max(offsets)))
    rejects = arrow_schema(REJECT_COLUMNS).empty_table()
    warehouse.land(LandingBatch(stream_partition, ranges, stream_rows(events, stream_partition), rejects))


def read_core(client, table: str) -> dict:
    rows = client.query(f"select * from `{table}`").result()
    return {
        r["company_number"]: (r["company_name"], r["company_status"], r["date_of_creation"], r["postal_code"], r["month_of_creation"])
        for r in rows
    }


def test_dbt_builds_on_the_bigquery_emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bigquery_emulator, bigquery_dataset):
    for name, value in bigquery_emulator.env(bigquery_dataset).items():
        monkeypatch.setenv(name, value)
    client = bigquery_emulator.client()
    warehouse = BigQueryWarehouse(client, bigquery_emulator.project, bigquery_dataset)
    warehouse.create_stream_tables()
    bulk_csv = write_sample(tmp_path / "bulk.csv", rows=1_000, seed=9)
    load_bigquery(client, bigquery_dataset, str(bulk_csv), BASELINE_FILE_DATE, progress=lambda _: None)
    bulk = parse_bulk_csv(bulk_csv)
    core_table = f"{bigquery_emulator.project}.{bigquery_dataset}.company_house_core"
    instance = dg.DagsterInstance.ephemeral()

    def build() -> None:
        result = dg.materialize([ch_dbt_models], resources={"dbt": dbt_resource()}, instance=instance)
        assert result.success
        assert [e.check_name for e in result.get_asset_check_evaluations() if not e.passed] == []

    build()
    assert read_core(client, core_table) == bulk

    history = History(bulk, seed=2)
    for number, batch in enumerate([history.batch_1, history.batch_2, history.batch_3], start=1):
        events = batch()
        land_on_bigquery(warehouse, events, f"batch-{number}")
        history.log.landed.extend(events)
    build()
    assert read_core(client, core_table) == expected_core(bulk, history.log.landed)
