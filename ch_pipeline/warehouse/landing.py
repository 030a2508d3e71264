"""The one small warehouse interface the stream asset lands through (DuckDB or BigQuery)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

import pyarrow as pa

from ch_pipeline.kafka.offsets import OffsetRange, parse_partition_key
from ch_pipeline.kafka.reader import read_ranges


@dataclass(frozen=True)
class LandingBatch:
    """One stream partition, parsed: its offset ranges, stream rows and reject rows."""

    stream_partition: str
    ranges: Sequence[OffsetRange]
    rows: pa.Table
    rejects: pa.Table
    message_bytes: int = 0


class Warehouse(Protocol):
    def land(self, batch: LandingBatch) -> None:
        """Replace, atomically, every stream and reject row whose Kafka coordinates lie in
        ``batch.ranges`` with the batch's rows: re-landing a partition never duplicates, and a
        failure leaves the previous state untouched."""


def read_stream_partition(kafka_config: Mapping[str, str], topic: str, stream_partition: str) -> LandingBatch:
    """Read exactly the offsets named by ``stream_partition`` and parse them into a batch."""
    from ch_pipeline.warehouse.stream_rows import StreamBatchBuilder

    ranges = parse_partition_key(stream_partition)
    builder = StreamBatchBuilder(stream_partition, ingested_at=datetime.now(timezone.utc))
    for messages in read_ranges(kafka_config, topic, ranges):
        builder.add(messages)
    return LandingBatch(stream_partition, ranges, builder.stream_table(), builder.rejects_table(), builder.bytes)


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
