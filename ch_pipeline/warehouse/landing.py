"""The warehouse interface: what the assets ask of a warehouse, whichever it is (DuckDB, BigQuery).

Implementations are listed in ``ch_pipeline.warehouse.IMPLEMENTATIONS``; the Kafka read that feeds
``Warehouse.land_messages`` is ``ch_pipeline.landing``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime, timezone
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from ch_pipeline.companies_house.streams import COMPANIES, STREAMS, StreamSpec
from ch_pipeline.kafka.offsets import OffsetRange

if TYPE_CHECKING:
    from ch_pipeline.warehouse.bulk_load import BulkLimits, Progress


@dataclass(frozen=True)
class LandingBatch:
    """One landing of one stream, parsed: its offset ranges, landing rows and reject rows. The
    stream names the tables they land in (``stream.landing_table``, ``stream.rejects_table``)."""

    stream_partition: str
    ranges: Sequence[OffsetRange]
    rows: pa.Table
    rejects: pa.Table
    message_bytes: int = 0
    stream: StreamSpec = STREAMS[COMPANIES]


@dataclass(frozen=True)
class LandingSummary:
    """What one landing wrote, once committed: counts, bytes and time bounds, no rows (a warehouse
    that lands chunk by chunk never holds them all)."""

    stream_partition: str
    ranges: Sequence[OffsetRange]
    rows: int
    rejects: int
    message_bytes: int = 0
    min_published_at: datetime | None = None
    max_published_at: datetime | None = None
    newest_kafka_timestamp: datetime | None = None  # of rows and rejects alike
    stream: StreamSpec = STREAMS[COMPANIES]

    def __post_init__(self) -> None:
        # Aware UTC whichever warehouse reported them (Arrow's and DuckDB's timestamps may come naive).
        for name in ("min_published_at", "max_published_at", "newest_kafka_timestamp"):
            object.__setattr__(self, name, _utc(getattr(self, name)))

    @classmethod
    def of_batch(cls, batch: LandingBatch) -> "LandingSummary":
        published = batch.rows.column("published_at")
        stamps = [pc.max(t.column("kafka_timestamp")).as_py() for t in (batch.rows, batch.rejects) if t.num_rows]
        return cls(
            batch.stream_partition,
            batch.ranges,
            batch.rows.num_rows,
            batch.rejects.num_rows,
            batch.message_bytes,
            pc.min(published).as_py() if batch.rows.num_rows else None,
            pc.max(published).as_py() if batch.rows.num_rows else None,
            max((_utc(t) for t in stamps if t is not None), default=None),
            batch.stream,
        )


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


def message_bytes(raw: pa.Table) -> int:
    """The bytes of a raw chunk's values and keys (``stream_rows.RAW_SCHEMA``), as Kafka carried them."""
    return sum(pc.sum(pc.binary_length(raw.column(name))).as_py() or 0 for name in ("value", "kafka_key"))


def parse_batch(
    stream_partition: str, ranges: Sequence[OffsetRange], chunks: Iterable[pa.Table], ingested_at: datetime,
    stream: StreamSpec = STREAMS[COMPANIES],
) -> LandingBatch:
    """Raw chunks (``stream_rows.RAW_SCHEMA``) parsed into one in-memory batch: the companies parser
    for companies, the envelope parser configured by the spec otherwise. For a warehouse that loads
    whole tables (BigQuery); DuckDB parses straight into its file instead (``land_messages``)."""
    from ch_pipeline.warehouse.envelope_rows import envelope_parser
    from ch_pipeline.warehouse.schema import arrow_schema, landing_columns
    from ch_pipeline.warehouse.stream_rows import StreamBatchBuilder

    if stream.name == COMPANIES:
        builder = StreamBatchBuilder(stream_partition, ingested_at)
    else:
        builder = StreamBatchBuilder(stream_partition, ingested_at, envelope_parser(stream), arrow_schema(landing_columns(stream)))
    for raw in chunks:
        builder.add_raw(raw)
    return LandingBatch(stream_partition, ranges, builder.stream_table(), builder.rejects_table(), builder.bytes, stream)


@dataclass(frozen=True)
class TimepointCoverage:
    """Which timepoints of a stream have landed: the first and last (None: nothing landed) and the
    missing ranges in between, inclusive, in order (at most ``MAX_GAPS`` of them)."""

    first: int | None
    last: int | None
    gaps: list[tuple[int, int]]

    @property
    def missing(self) -> int:
        return sum(last - first + 1 for first, last in self.gaps)


MAX_GAPS = 100


def timepoint_gaps_sql(table: str) -> str:
    """SQL (DuckDB and BigQuery alike) of the missing timepoint ranges of a landing table, one row
    (first_missing, last_missing) per gap. DISTINCT: the server re-sends an event now and then (same
    timepoint twice), which is no gap; rejected messages have no row and so show as a gap."""
    return f"""
WITH landed AS (
  SELECT DISTINCT timepoint FROM {table} WHERE timepoint IS NOT NULL
), steps AS (
  SELECT timepoint, LEAD(timepoint) OVER (ORDER BY timepoint) AS next_timepoint FROM landed
)
SELECT timepoint + 1 AS first_missing, next_timepoint - 1 AS last_missing
FROM steps WHERE next_timepoint > timepoint + 1
ORDER BY first_missing
LIMIT {MAX_GAPS}"""


def timepoint_range_sql(table: str) -> str:
    return f"SELECT MIN(timepoint), MAX(timepoint) FROM {table}"


class Warehouse(Protocol):
    """Every operation the assets need of a warehouse."""

    @classmethod
    def from_config(cls, config: Any) -> "Warehouse":
        """The warehouse ``config`` (the warehouse resource: ``duckdb_path``, ``gcp_project``, ...) points at.
        Called inside a run, never while the definitions load (it may open a client)."""

    def create_stream_tables(self, stream: StreamSpec = STREAMS[COMPANIES]) -> None:
        """Create ``stream``'s landing and reject tables if missing (idempotent DDL from ``schema.py``)."""

    def land(self, batch: LandingBatch) -> None:
        """In ``batch.stream``'s tables, replace, atomically, every row whose Kafka coordinates lie in
        ``batch.ranges`` with the batch's rows: re-landing a partition never duplicates, and a
        failure leaves the previous state untouched."""

    def land_messages(
        self, stream_partition: str, ranges: Sequence[OffsetRange], chunks: Iterable[pa.Table], ingested_at: datetime,
        stream: StreamSpec = STREAMS[COMPANIES],
    ) -> LandingSummary:
        """``land`` for raw messages: parse ``chunks`` (Arrow tables in ``stream_rows.RAW_SCHEMA``, read
        lazily, one at a time) into ``stream``'s landing and reject rows and replace the rows at
        ``ranges`` with them, atomically, with the same guarantees as ``land``. A warehouse may parse
        everything first (``parse_batch`` + ``land``) or stream the chunks into its open transaction."""

    def timepoint_coverage(self, stream: StreamSpec) -> TimepointCoverage:
        """The landed timepoints of ``stream`` (its landing table; empty coverage when it does not exist yet)."""

    def load_bulk(self, source: str, file_date: date, progress: Progress = print, limits: "BulkLimits | None" = None) -> int:
        """Replace the bulk table with the cleaned snapshot at ``source`` (a path or an allowed
        https URL, ``bulk_load.local_csv``), the file of ``file_date``; returns its row count."""


def offsets_predicate(ranges: Sequence[OffsetRange], qualifier: str | None = None) -> str:
    """SQL (DuckDB and BigQuery alike) matching rows whose Kafka coordinates lie in ``ranges``.

    Rows are replaced by coordinates rather than by partition key: whichever partition key
    landed an offset before (e.g. after a cursor was reset by hand), an offset is held once.
    """
    if not ranges:
        raise ValueError("a landing needs at least one offset range")
    prefix = f"{qualifier}." if qualifier else ""
    return "(" + " OR ".join(
        f"({prefix}kafka_partition = {int(r.partition)} AND {prefix}kafka_offset BETWEEN {int(r.first)} AND {int(r.last)})"
        for r in ranges
    ) + ")"
