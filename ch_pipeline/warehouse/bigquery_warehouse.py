"""The BigQuery warehouse (production): CSV load jobs into staging tables, then one MERGE per table.

Why CSV: the offline emulator that verifies this path loads CSV only (no Parquet, no streaming
inserts; deploy/bigquery-emulator.md), and a load job is free and atomic in production.
Why MERGE and not ``BEGIN TRANSACTION; DELETE; INSERT; COMMIT``: the emulator has no DELETE and no
transactions, while ``MERGE ... ON FALSE WHEN NOT MATCHED BY SOURCE AND <offsets> THEN DELETE
WHEN NOT MATCHED THEN INSERT`` replaces the batch's offsets in one DML statement, which BigQuery
applies atomically. Each table is replaced atomically; rejects are merged before stream rows,
and a failure between the two is repaired by the run's retry (both merges are idempotent).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from ch_pipeline.companies_house.bulk_csv import DATE_FORMAT
from ch_pipeline.companies_house.streams import COMPANIES, STREAMS, StreamSpec
from ch_pipeline.kafka.offsets import OffsetRange
from ch_pipeline.warehouse.bulk_cleaning import Dialect, load_cleaned, staging_columns
from ch_pipeline.warehouse.bulk_load import DEFAULT_LIMITS, BulkLimits, Progress
from ch_pipeline.warehouse.landing import (
    LandingBatch,
    LandingSummary,
    TimepointCoverage,
    parse_batch,
    offsets_predicate,
    timepoint_gaps_sql,
    timepoint_range_sql,
)
from ch_pipeline.warehouse.schema import BULK_TABLE, REJECT_COLUMNS, Column, bigquery_ddl, bigquery_schema, landing_columns

# Deletes by Kafka coordinates touch few blocks when the table is clustered on them.
CLUSTERING_FIELDS = ["kafka_partition", "kafka_offset"]


def landed_tables(stream: StreamSpec) -> tuple[tuple[str, list[Column]], ...]:
    """``stream``'s tables with their columns, rejects first: once a landing's rows are visible, its rejects are too."""
    return ((stream.rejects_table, REJECT_COLUMNS), (stream.landing_table, landing_columns(stream)))


# The bulk cleaning query's dialect (bulk_cleaning.cleaning_select).
BIGQUERY = Dialect(
    regexp_replace_all=lambda value, pattern, repl: f"regexp_replace({value}, r'{pattern}', '{repl}')",
    parse_dmy_date=lambda value: f"safe.parse_date('{DATE_FORMAT}', {value})",
    month_start=lambda value: f"date_trunc({value}, month)",
)


def make_client(project: str | None, location: str | None, api_endpoint: str | None, credentials_path: str | None):
    """A client for production (service account file or application default credentials) or an emulator."""
    from google.cloud import bigquery

    if api_endpoint:
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials

        return bigquery.Client(
            project=project,
            location=location,
            credentials=AnonymousCredentials(),
            client_options=ClientOptions(api_endpoint=api_endpoint),
        )
    if credentials_path:
        from google.oauth2 import service_account

        credentials = service_account.Credentials.from_service_account_file(credentials_path)
        return bigquery.Client(project=project or credentials.project_id, location=location, credentials=credentials)
    return bigquery.Client(project=project, location=location)


def client_from_config(config):
    """``make_client`` for the warehouse resource's ``gcp_project``, location, endpoint and credentials."""
    return make_client(config.gcp_project, config.bigquery_location, config.bigquery_api_endpoint, config.gcp_credentials_path)


def staging_table_name(table: str, stream_partition: str) -> str:
    """One staging table per (table, stream partition): concurrent landings never share one."""
    return f"{table}__landing_{hashlib.sha256(stream_partition.encode()).hexdigest()[:16]}"


def load_job_config(columns: list[Column], quoted_newlines: bool = False):
    from google.cloud import bigquery

    config = bigquery.LoadJobConfig(
        source_format=bigquery.SourceFormat.CSV,
        schema=bigquery_schema(columns, all_nullable=True),
        skip_leading_rows=1,
        write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
        create_disposition=bigquery.CreateDisposition.CREATE_IF_NEEDED,
    )
    if quoted_newlines:
        # Set only when needed: it makes BigQuery read the file serially, and the emulator refuses it.
        config.allow_quoted_newlines = True
    return config


def has_line_breaks(table: pa.Table) -> bool:
    """Whether some text value holds a line break (a name with an escaped ``\\n`` in its JSON)."""
    return any(
        pc.any(pc.match_substring_regex(column, "[\r\n]")).as_py() or False
        for column in table.columns
        if pa.types.is_string(column.type)
    )


def to_csv(table: pa.Table) -> bytes:
    """CSV that BigQuery loads back to the same values.

    Timestamps are written unquoted as UTC ``YYYY-MM-DD HH:MM:SS.ffffff`` without an offset
    (Arrow's rendering of a zone-less timestamp): BigQuery reads that as UTC, and it is the only
    spelling with a fraction that the emulator accepts (it refuses quoted timestamps too).
    """
    for index, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type) and field.type.tz is not None:
            utc = pc.cast(table.column(index), pa.timestamp(field.type.unit))  # values are UTC already
            table = table.set_column(index, pa.field(field.name, utc.type), utc)
    sink = io.BytesIO()
    pa_csv.write_csv(table, sink)
    return sink.getvalue()


def replace_statement(dataset: str, table: str, staging: str, columns: list[Column], ranges: Sequence[OffsetRange]) -> str:
    """One MERGE that deletes the target's rows at ``ranges`` and inserts the staging rows: atomic."""
    names = ", ".join(c.name for c in columns)
    values = ", ".join(f"source.{c.name}" for c in columns)
    return (
        f"MERGE `{dataset}.{table}` AS target\n"
        f"USING `{dataset}.{staging}` AS source\n"
        "ON FALSE\n"
        f"WHEN NOT MATCHED BY SOURCE AND {offsets_predicate(ranges, 'target')} THEN DELETE\n"
        f"WHEN NOT MATCHED THEN INSERT ({names}) VALUES ({values})"
    )


def landing_script(
    dataset: str, staging: dict[str, str], ranges: Sequence[OffsetRange], stream: StreamSpec = STREAMS[COMPANIES]
) -> str:
    """The query that replaces the batch's offsets: one MERGE per table, rejects first."""
    return ";\n".join(
        replace_statement(dataset, table, staging[table], columns, ranges) for table, columns in landed_tables(stream)
    ) + ";"


def load_bigquery(
    client, dataset: str, source: str, file_date: date, table: str = BULK_TABLE, progress: Progress = print,
    limits: BulkLimits = DEFAULT_LIMITS,
) -> int:
    """Load job into a staging table (all STRING, columns named from the header), then one cleaning
    query replaces `table`; returns its row count."""
    from google.cloud import bigquery

    staging = f"{client.project}.{dataset}.{table}_staging"
    target = f"{client.project}.{dataset}.{table}"

    def stage(path: Path) -> str:
        job_config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.CSV,
            skip_leading_rows=1,
            schema=[bigquery.SchemaField(name, "STRING") for name in staging_columns(path)],
            # No allow_quoted_newlines: the published file has none, and the offline emulator refuses
            # the option (deploy/bigquery-emulator.md); a stray one fails the job loudly, losing nothing.
            write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
        )
        progress(f"BigQuery load job: {path.name} -> {staging}")
        with path.open("rb") as stream:
            client.load_table_from_file(stream, staging, job_config=job_config).result()
        return f"`{staging}`"

    def run_one(statements: list[str]) -> None:
        [sql] = statements  # BIGQUERY keeps one row per company in the cleaning query itself
        client.query(sql).result()

    load_cleaned(source, file_date, f"`{target}`", BIGQUERY, stage, run_one, progress, limits)
    client.delete_table(staging, not_found_ok=True)
    rows = client.get_table(target).num_rows
    progress(f"{target}: {rows:,} companies")
    return rows


class BigQueryWarehouse:
    def __init__(self, client, project: str, dataset: str, location: str | None = None) -> None:
        self.client = client
        self.project = project
        self.dataset = dataset
        self.location = location

    @classmethod
    def from_config(cls, config) -> "BigQueryWarehouse":
        """``gcp_project``.``bigquery_dataset`` (both needed), with a client from ``make_client``."""
        if not (config.gcp_project and config.bigquery_dataset):
            raise ValueError("CH_WAREHOUSE=bigquery needs GCP_PROJECT and BIGQUERY_DATASET: set both")
        return cls(client_from_config(config), config.gcp_project, config.bigquery_dataset, config.bigquery_location)

    def load_bulk(self, source: str, file_date: date, progress: Progress = print, limits: BulkLimits | None = None) -> int:
        return load_bigquery(self.client, self.dataset, source, file_date, progress=progress, limits=limits or DEFAULT_LIMITS)

    def _ref(self, table: str) -> str:
        return f"{self.project}.{self.dataset}.{table}"

    def create_stream_tables(self, stream: StreamSpec = STREAMS[COMPANIES]) -> None:
        # DDL, not the REST schema: it keeps NOT NULL (REQUIRED), which the emulator refuses over REST.
        dataset = f"{self.project}.{self.dataset}"
        script = ";\n".join(bigquery_ddl(table, columns, dataset, CLUSTERING_FIELDS) for table, columns in landed_tables(stream))
        self.client.query(script + ";", location=self.location).result()

    def timepoint_coverage(self, stream: StreamSpec) -> TimepointCoverage:
        self.create_stream_tables(stream)
        table = f"`{self._ref(stream.landing_table)}`"
        [(first, last)] = [tuple(row.values()) for row in self.client.query(timepoint_range_sql(table), location=self.location).result()]
        gaps = [tuple(row.values()) for row in self.client.query(timepoint_gaps_sql(table), location=self.location).result()]
        return TimepointCoverage(first, last, gaps)

    def land_messages(
        self, stream_partition: str, ranges: Sequence[OffsetRange], chunks: Iterable[pa.Table], ingested_at: datetime,
        stream: StreamSpec = STREAMS[COMPANIES],
    ) -> LandingSummary:
        """Parse everything in memory first (load jobs take whole files), then ``land``."""
        batch = parse_batch(stream_partition, ranges, chunks, ingested_at, stream)
        self.land(batch)
        return LandingSummary.of_batch(batch)

    def land(self, batch: LandingBatch) -> None:
        tables = landed_tables(batch.stream)
        self.create_stream_tables(batch.stream)
        staging = {table: staging_table_name(table, batch.stream_partition) for table, _ in tables}
        try:
            rows_of = {batch.stream.landing_table: batch.rows, batch.stream.rejects_table: batch.rejects}
            for table, columns in tables:
                rows = rows_of[table]
                job = self.client.load_table_from_file(
                    io.BytesIO(to_csv(rows)),
                    self._ref(staging[table]),
                    job_config=load_job_config(columns, quoted_newlines=has_line_breaks(rows)),
                )
                job.result()
            self.client.query(
                landing_script(f"{self.project}.{self.dataset}", staging, batch.ranges, batch.stream), location=self.location
            ).result()
        finally:
            for name in staging.values():
                self.client.delete_table(self._ref(name), not_found_ok=True)
