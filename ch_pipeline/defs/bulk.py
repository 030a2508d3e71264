"""``company_house_bulk``: the Companies House bulk snapshot, the core table's baseline (docs/architecture.md §3, §6)."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from ch_pipeline.companies_house.bulk_csv import write_sample
from ch_pipeline.defs.metadata import ASSET_GROUP, column_schema
from ch_pipeline.defs.resources import WarehouseResource
from ch_pipeline.warehouse.bulk_load import is_url, redact_source
from ch_pipeline.warehouse.schema import BULK_COLUMNS, BULK_TABLE

SAMPLE_FILE_NAME = "BasicCompanyDataAsOneFile-sample.csv"


class BulkLoadConfig(dg.Config):
    source: str | None = Field(
        default=None,
        description="Path, or https URL on download.companieshouse.gov.uk, of BasicCompanyDataAsOneFile "
        "(.csv or the published .zip). "
        "Default: CH_BULK_CSV; when that is unset too, a generated sample under CH_DATA_DIR.",
    )
    sample_rows: int = Field(default=100_000, description="Companies in the generated sample.")


def bulk_source(config: BulkLoadConfig, warehouse: WarehouseResource, log) -> str:
    """The file to load: run config, else CH_BULK_CSV, else a realistic sample (generated once)."""
    if config.source or warehouse.bulk_csv:
        return config.source or warehouse.bulk_csv
    sample = Path(warehouse.data_dir) / "bulk" / SAMPLE_FILE_NAME
    if not sample.exists():
        log.info(f"CH_BULK_CSV is unset: generating a sample of {config.sample_rows:,} companies at {sample}")
        write_sample(sample, config.sample_rows)
    return str(sample)


@dg.asset(
    name=BULK_TABLE,
    pool="duckdb",  # one DuckDB writer at a time (docs/architecture.md §11)
    group_name=ASSET_GROUP,
    kinds={"csv", "duckdb", "bigquery"},
    # Loaded once when missing (a fresh warehouse); a failed load is not retried in a loop. A new
    # monthly file is loaded by materializing it (run config `source`, or CH_BULK_CSV).
    automation_condition=(
        dg.AutomationCondition.missing() & ~dg.AutomationCondition.in_progress() & ~dg.AutomationCondition.execution_failed()
    ).with_label("missing"),
    description="Companies House bulk snapshot (BasicCompanyDataAsOneFile, monthly), cleaned: one row per "
    "company, statuses and postcodes in the stream's form. The core table's first build starts from it.",
    metadata=column_schema(BULK_COLUMNS),
)
def company_house_bulk(
    context: dg.AssetExecutionContext, config: BulkLoadConfig, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    source = bulk_source(config, warehouse, context.log)
    shown = redact_source(source)  # a URL without its query string or userinfo
    context.log.info(f"loading the bulk snapshot from {shown}")
    # The stream tables are created too (idempotent DDL from schema.py): the first dbt build runs
    # as soon as the bulk table exists, and its snapshot reads the stream table, landed or not.
    target = warehouse.warehouse()
    rows = target.load_bulk(source, progress=context.log.info)
    target.create_stream_tables()
    return dg.MaterializeResult(
        metadata={"dagster/row_count": rows, "source": shown if is_url(source) else Path(source).name}
    )
