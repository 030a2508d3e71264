"""``company_house_bulk``: the monthly Companies House bulk file, one partition per file date
(docs/architecture.md §3, §6). The next dbt build reconciles the core with a newer file
(ch_dbt/macros/bulk_file.sql)."""

from datetime import date, datetime, timezone
from pathlib import Path

import dagster as dg
from pydantic import Field

from ch_pipeline.companies_house.bulk_csv import (
    FILE_DATE_PLACEHOLDER,
    PUBLISHED_URL,
    SAMPLE_FILE_DATE,
    file_date_in_name,
    published_name,
    write_sample,
)
from ch_pipeline.defs.metadata import ASSET_GROUP, column_schema
from ch_pipeline.defs.resources import WarehouseResource
from ch_pipeline.settings import Settings
from ch_pipeline.warehouse.bulk_load import is_url, redact_source
from ch_pipeline.warehouse.schema import BULK_COLUMNS, BULK_TABLE

# One partition per published file, keyed by its date (the first of the month): 2026-11-01 is
# BasicCompanyDataAsOneFile-2026-11-01.zip. The current month's partition exists from its first day.
BULK_MONTHS = dg.MonthlyPartitionsDefinition(start_date="2020-01-01", end_offset=1)


class BulkLoadConfig(dg.Config):
    source: str | None = Field(
        default=None,
        description="Path, or https URL on download.companieshouse.gov.uk, of the partition's "
        "BasicCompanyDataAsOneFile (.csv or the published .zip); `{file_date}` stands for the partition's date. "
        "Default: CH_BULK_CSV; when that is unset too, a generated sample (the file of "
        f"{SAMPLE_FILE_DATE.isoformat()} only) under CH_DATA_DIR.",
    )
    sample_rows: int = Field(default=100_000, description="Companies in the generated sample.")


def bulk_source(file_date: date, configured: str | None, data_dir: str, sample_rows: int, log) -> str:
    """The file of ``file_date``: ``configured`` (run config, else CH_BULK_CSV) with its date filled
    in, else the generated sample, which is the file of SAMPLE_FILE_DATE only."""
    if configured:
        source = configured.replace(FILE_DATE_PLACEHOLDER, file_date.isoformat())
        named = file_date_in_name(source)
        if named is not None and named != file_date:
            raise dg.Failure(f"{redact_source(source)} is the file of {named}, not of {file_date}: load it as partition {named}")
        return source
    if file_date != SAMPLE_FILE_DATE:
        raise dg.Failure(
            f"no file for {file_date}: CH_BULK_CSV is unset, so only the generated sample, the file of "
            f"{SAMPLE_FILE_DATE}, can be loaded. Set CH_BULK_CSV (or run config `source`) to the month's file; "
            f"`{FILE_DATE_PLACEHOLDER}` stands for its date, e.g. {PUBLISHED_URL}"
        )
    sample = Path(data_dir) / "bulk" / published_name(SAMPLE_FILE_DATE, ".csv")
    if not sample.exists():
        log.info(f"CH_BULK_CSV is unset: generating a sample of {sample_rows:,} companies at {sample}")
        write_sample(sample, sample_rows)
    return str(sample)


def first_file_date(bulk_csv: str | None, today: date) -> date:
    """The file a new pipeline starts from: the sample's, the date in CH_BULK_CSV's name, else this month's."""
    if not bulk_csv:
        return SAMPLE_FILE_DATE
    return file_date_in_name(bulk_csv) or today.replace(day=1)


class FirstFileMissing(dg.AutomationCondition):
    """The first file (``first_file_date``) while no file was ever loaded: a new pipeline starts from
    it. Later months come from the monthly schedule or by hand, never by themselves."""

    @property
    def name(self) -> str:
        return "first_file_missing"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        if context.asset_graph_view.instance.get_latest_materialization_event(context.key) is not None:
            return dg.AutomationResult(context=context, true_subset=context.get_empty_subset())
        first = first_file_date(Settings.from_env().bulk_csv, datetime.now(timezone.utc).date())
        subset = context.candidate_subset.compute_intersection_with_partition_keys({first.isoformat()})
        return dg.AutomationResult(context=context, true_subset=subset)


@dg.asset(
    name=BULK_TABLE,
    partitions_def=BULK_MONTHS,
    pool="duckdb",  # one DuckDB writer at a time (docs/architecture.md §11)
    group_name=ASSET_GROUP,
    kinds={"csv", "duckdb", "bigquery"},
    # A failed load is not retried in a loop: run retries cover a crash, a person the rest.
    automation_condition=(
        FirstFileMissing() & ~dg.AutomationCondition.in_progress() & ~dg.AutomationCondition.execution_failed()
    ).with_label("first file missing"),
    description="Companies House bulk file (BasicCompanyDataAsOneFile), one partition per monthly file, cleaned: "
    "one row per company, statuses and postcodes in the stream's form, stamped with the file's date. The table "
    "holds the file loaded last; the next dbt build reconciles company_house_core with a newer one.",
    metadata=column_schema(BULK_COLUMNS),
)
def company_house_bulk(
    context: dg.AssetExecutionContext, config: BulkLoadConfig, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    file_date = date.fromisoformat(context.partition_key)
    source = bulk_source(file_date, config.source or warehouse.bulk_csv, warehouse.data_dir, config.sample_rows, context.log)
    shown = redact_source(source)  # a URL without its query string or userinfo
    context.log.info(f"loading the bulk file of {file_date} from {shown}")
    # The stream tables are created too (idempotent DDL from schema.py): the first dbt build runs
    # as soon as a file is loaded, and its snapshot reads the stream table, landed or not.
    target = warehouse.warehouse()
    rows = target.load_bulk(source, file_date, progress=context.log.info)
    target.create_stream_tables()
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows,
            "source": shown if is_url(source) else Path(source).name,
            "file_date": dg.MetadataValue.text(file_date.isoformat()),
        }
    )


bulk_monthly_job = dg.define_asset_job("company_house_bulk_monthly_job", selection=[BULK_TABLE])


@dg.schedule(
    job=bulk_monthly_job,
    cron_schedule="0 6 8 * *",  # Companies House publishes the month's file in its first working days
    execution_timezone="UTC",
    # On where CH_BULK_CSV follows the months (`{file_date}`, e.g. the published URL); a fixed file
    # or the sample has no new month to load.
    default_status=dg.DefaultScheduleStatus.RUNNING
    if FILE_DATE_PLACEHOLDER in (Settings.from_env().bulk_csv or "")
    else dg.DefaultScheduleStatus.STOPPED,
    description="Loads the month's bulk file (CH_BULK_CSV with {file_date}); the next dbt build reconciles the core.",
)
def company_house_bulk_monthly(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    month = context.scheduled_execution_time.date().replace(day=1).isoformat()
    return dg.RunRequest(run_key=month, partition_key=month)
