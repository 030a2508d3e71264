"""The BigQuery warehouse (production): CSV load jobs into staging tables, then one transaction.

Why CSV and not Parquet or streaming inserts: the offline emulator used to verify this path
supports CSV load jobs only (issue 8), and a load job is free and atomic per table in production.
The replace is a single multi-statement query (``BEGIN TRANSACTION; DELETE; INSERT ...; COMMIT``):
BigQuery rolls the transaction back automatically when any statement fails
(https://cloud.google.com/bigquery/docs/transactions), so a failed landing leaves no partial rows.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from ch_pipeline.kafka.offsets import OffsetRange
from ch_pipeline.warehouse.landing import LandingBatch, offsets_predicate
from ch_pipeline.warehouse.schema import (
    REJECT_COLUMNS,
    REJECTS_TABLE,
    STREAM_COLUMNS,
    STREAM_TABLE,
    Column,
    bigquery_schema,
)

# Deletes by Kafka coordinates touch few blocks when the table is clustered on them.
CLUSTERING_FIELDS = ["kafka_partition", "kafka_offset"]
_LANDED_TABLES = ((STREAM_TABLE, STREAM_COLUMNS), (REJECTS_TABLE, REJECT_COLUMNS))


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


def staging_table_name(table: str, stream_partition: str) -> str:
    """One staging table per (table, stream partition): concurrent landings never share one."""
    return f"{table}__landing_{hashlib.sha256(stream_partition.encode()).hexdigest()[:16]}"


def load_job_config(columns: list[Column]):
    from google.cloud import bigquery

    return bigquery.LoadJobConfig(
        source_format=bigquery.SourceFormat.CSV,
        schema=bigquery_schema(columns),
        skip_leading_rows=1,
        allow_quoted_newlines=True,  # raw events may hold line breaks inside quoted fields
        write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
        create_disposition=bigquery.CreateDisposition.CREATE_IF_NEEDED,
    )


def to_csv(table: pa.Table) -> bytes:
    """CSV that BigQuery loads back to the same values: timestamps as ``YYYY-MM-DD HH:MM:SS.ffffff+00:00``."""
    for index, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type):
            text = pc.strftime(table.column(index), format="%Y-%m-%d %H:%M:%S+00:00", locale="C")
            table = table.set_column(index, pa.field(field.name, pa.string()), text)
    sink = io.BytesIO()
    pa_csv.write_csv(table, sink)
    return sink.getvalue()


def landing_script(dataset: str, staging: dict[str, str], ranges: Sequence[OffsetRange]) -> str:
    """The one query that replaces the batch's offsets in both tables, atomically."""
    predicate = offsets_predicate(ranges)
    statements = ["BEGIN TRANSACTION;"]
    for table, columns in _LANDED_TABLES:
        names = ", ".join(c.name for c in columns)
        statements.append(f"DELETE FROM `{dataset}.{table}` WHERE {predicate};")
        statements.append(f"INSERT INTO `{dataset}.{table}` ({names}) SELECT {names} FROM `{dataset}.{staging[table]}`;")
    statements.append("COMMIT TRANSACTION;")
    return "\n".join(statements)


class BigQueryWarehouse:
    def __init__(self, client, project: str, dataset: str, location: str | None = None) -> None:
        self.client = client
        self.project = project
        self.dataset = dataset
        self.location = location

    def _ref(self, table: str) -> str:
        return f"{self.project}.{self.dataset}.{table}"

    def create_stream_tables(self) -> None:
        from google.cloud import bigquery

        for table, columns in _LANDED_TABLES:
            definition = bigquery.Table(self._ref(table), schema=bigquery_schema(columns))
            definition.clustering_fields = CLUSTERING_FIELDS
            self.client.create_table(definition, exists_ok=True)

    def land(self, batch: LandingBatch) -> None:
        self.create_stream_tables()
        staging = {table: staging_table_name(table, batch.stream_partition) for table, _ in _LANDED_TABLES}
        try:
            for (table, columns), rows in zip(_LANDED_TABLES, (batch.rows, batch.rejects)):
                job = self.client.load_table_from_file(
                    io.BytesIO(to_csv(rows)), self._ref(staging[table]), job_config=load_job_config(columns)
                )
                job.result()
            self.client.query(
                landing_script(f"{self.project}.{self.dataset}", staging, batch.ranges), location=self.location
            ).result()
        finally:
            for name in staging.values():
                self.client.delete_table(self._ref(name), not_found_ok=True)
