"""The warehouse tables, written once (docs/architecture.md §5).

Each table is a list of ``Column``s; the DuckDB DDL, the BigQuery schema and the Arrow schema of
landed batches are all derived from it, so the three can never drift apart. Timestamps are
absolute instants in UTC (DuckDB ``TIMESTAMPTZ`` = BigQuery ``TIMESTAMP``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from ch_pipeline.companies_house.streams import COMPANIES, STREAMS, StreamSpec

# The companies stream's tables (every stream's: StreamSpec.landing_table / rejects_table).
STREAM_TABLE = STREAMS[COMPANIES].landing_table
REJECTS_TABLE = STREAMS[COMPANIES].rejects_table
BULK_TABLE = "company_house_bulk"
# The dbt model the companies stream and the bulk file meet in (ch_dbt/models/core).
CORE_MODEL = "company_house_core"


@dataclass(frozen=True)
class Column:
    name: str
    arrow_type: pa.DataType
    description: str
    nullable: bool = True
    duckdb_compression: str | None = None  # DuckDB's choice when None

    @property
    def duckdb_type(self) -> str:
        return _DUCKDB_TYPES[self.arrow_type]

    @property
    def duckdb_definition(self) -> str:
        """The column's DuckDB type, with its compression when it has one."""
        compression = f" USING COMPRESSION {self.duckdb_compression}" if self.duckdb_compression else ""
        return self.duckdb_type + compression

    @property
    def bigquery_type(self) -> str:
        return _BIGQUERY_TYPES[self.arrow_type]


_TIMESTAMP = pa.timestamp("us", tz="UTC")
_DUCKDB_TYPES = {
    pa.string(): "VARCHAR",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.date32(): "DATE",
    _TIMESTAMP: "TIMESTAMPTZ",
}
_BIGQUERY_TYPES = {
    pa.string(): "STRING",
    pa.int32(): "INT64",
    pa.int64(): "INT64",
    pa.date32(): "DATE",
    _TIMESTAMP: "TIMESTAMP",
}

COMPANY_COLUMNS = [
    Column("company_name", pa.string(), "Registered company name."),
    Column("company_number", pa.string(), "Companies House company number, e.g. 01234567 or SC123456."),
    Column("company_status", pa.string(), "Status in the stream's lower-case form, e.g. active, dissolved."),
    Column("date_of_creation", pa.date32(), "Incorporation date."),
    Column("postal_code", pa.string(), "Registered office postcode; NULL when the address is missing."),
]

# Where a message came from and which landing wrote it: the last columns of every stream's landing table.
KAFKA_COLUMNS = [
    Column("kafka_partition", pa.int32(), "Kafka partition of the message.", nullable=False),
    Column("kafka_offset", pa.int64(), "Kafka offset of the message.", nullable=False),
    Column("kafka_timestamp", _TIMESTAMP, "Kafka message timestamp (UTC)."),
    Column("stream_partition", pa.string(), "Dagster partition key (the offset range) that landed the row.", nullable=False),
    Column("ingested_at", _TIMESTAMP, "When the landing run wrote the row (UTC).", nullable=False),
    # zstd: a third of the size of DuckDB's default string compression for this JSON, and cheaper to
    # write (docs/architecture.md §11). Tables created before keep theirs.
    Column("raw_event", pa.string(), "The Kafka message value as received (UTF-8 JSON).", duckdb_compression="zstd"),
]

STREAM_COLUMNS = [
    *COMPANY_COLUMNS,
    Column("published_at", _TIMESTAMP, "When Companies House published the event (UTC)."),
    Column("event_type", pa.string(), "changed or deleted."),
    Column("timepoint", pa.int64(), "The stream's event timepoint (resume position); NULL for flat tutorial records."),
    Column("resource_kind", pa.string(), "e.g. company-profile."),
    *KAFKA_COLUMNS,
]

REJECT_COLUMNS = [
    Column("kafka_partition", pa.int32(), "Kafka partition of the message.", nullable=False),
    Column("kafka_offset", pa.int64(), "Kafka offset of the message.", nullable=False),
    Column("kafka_timestamp", _TIMESTAMP, "Kafka message timestamp (UTC)."),
    Column("kafka_key", pa.string(), "Message key, base64 (NULL when the key is null)."),
    Column("raw_value_base64", pa.string(), "The message value bytes, base64 (NULL for a null value)."),
    Column("error", pa.string(), "Why the message could not be parsed."),
    Column("stream_partition", pa.string(), "Dagster partition key (the offset range) that landed the row.", nullable=False),
    Column("ingested_at", _TIMESTAMP, "When the landing run wrote the row (UTC).", nullable=False),
]

# The landing table of every stream but companies: the envelope, then the stream's row fields as
# text (scalars as text, lists/objects as compact JSON; dbt types them), then the Kafka coordinates.
ENVELOPE_COLUMNS = [
    Column("company_number", pa.string(), "Company number from resource_uri (/company/<number>/...); "
           "NULL for items not under a company (disqualified officers)."),
    Column("item_id", pa.string(), "The item as Companies House keys it: the last resource_uri segment, else "
           "resource_id; the company number for streams with one item per company (insolvency, exemptions)."),
    Column("resource_kind", pa.string(), "e.g. company-officers, individual-beneficial-owner."),
    Column("resource_uri", pa.string(), "The item's path, as sent (the exemptions stream omits the leading slash)."),
    Column("resource_id", pa.string(), "The envelope's resource_id, as sent."),
    Column("event_type", pa.string(), "changed or deleted."),
    Column("timepoint", pa.int64(), "The stream's event timepoint (resume position, increasing within the stream)."),
    Column("published_at", _TIMESTAMP, "When Companies House published the event (UTC)."),
]


# Names a row field cannot take: the landing table's own columns, and the parser's working names.
_TAKEN_NAMES = {c.name for c in ENVELOPE_COLUMNS + KAFKA_COLUMNS} | {"error", "kafka_key", "raw_value_base64"}


def row_field_columns(spec: StreamSpec) -> list[Column]:
    taken = sorted(_TAKEN_NAMES & {column for column, _ in spec.row_fields})
    if taken:
        raise ValueError(f"stream {spec.name}: row fields {taken} would shadow landing table columns; rename them")
    return [
        Column(column, pa.string(), f"data.{path} as text (lists and objects as compact JSON); NULL when missing.")
        for column, path in spec.row_fields
    ]


def landing_columns(spec: StreamSpec) -> list[Column]:
    """The landing table of ``spec`` (``spec.landing_table``); its rejects table has ``REJECT_COLUMNS``."""
    if spec.name == COMPANIES:
        return STREAM_COLUMNS
    return [*ENVELOPE_COLUMNS, *row_field_columns(spec), *KAFKA_COLUMNS]


BULK_COLUMNS = [
    *COMPANY_COLUMNS,
    Column("month_of_creation", pa.date32(), "First day of the incorporation month."),
    Column("file_date", pa.date32(), "The file's date (BasicCompanyDataAsOneFile-<date>): the register as at 00:00 UTC "
           "that day. The core orders the file's rows against stream events by it.", nullable=False),
]


def arrow_schema(columns: list[Column]) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.arrow_type, nullable=c.nullable) for c in columns])


def create_table_ddl(name: str, columns: list[Column], sql_type: Callable[[Column], str], suffix: str = "") -> str:
    """``CREATE TABLE IF NOT EXISTS`` with the columns in order, NOT NULL where not nullable; ``name``
    already qualified and quoted for the dialect, ``sql_type`` the dialect's type of a column."""
    body = ",\n  ".join(f"{c.name} {sql_type(c)}{'' if c.nullable else ' NOT NULL'}" for c in columns)
    return f"CREATE TABLE IF NOT EXISTS {name} (\n  {body}\n){suffix}"


def duckdb_ddl(table: str, columns: list[Column], schema: str | None = None) -> str:
    return create_table_ddl(f"{schema}.{table}" if schema else table, columns, lambda c: c.duckdb_definition)


def bigquery_schema(columns: list[Column], all_nullable: bool = False) -> list:
    """BigQuery ``SchemaField``s; ``all_nullable`` for staging tables of load jobs (the offline
    emulator refuses REQUIRED in REST schemas; the target table's DDL keeps NOT NULL)."""
    from google.cloud import bigquery

    return [
        bigquery.SchemaField(
            c.name, c.bigquery_type, mode="NULLABLE" if c.nullable or all_nullable else "REQUIRED", description=c.description
        )
        for c in columns
    ]


def bigquery_ddl(table: str, columns: list[Column], dataset: str, cluster_by: list[str] | None = None) -> str:
    clustering = f"\nCLUSTER BY {', '.join(cluster_by)}" if cluster_by else ""
    return create_table_ddl(f"`{dataset}.{table}`", columns, lambda c: c.bigquery_type, clustering)
