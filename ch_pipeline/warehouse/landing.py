"""The one small warehouse interface the stream asset lands through (DuckDB or BigQuery)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

from ch_pipeline.kafka.offsets import OffsetRange


@dataclass(frozen=True)
class LandingBatch:
    """One stream partition, parsed: its offset ranges, stream rows and reject rows."""

    stream_partition: str
    ranges: Sequence[OffsetRange]
    rows: pa.Table
    rejects: pa.Table


class Warehouse(Protocol):
    def land(self, batch: LandingBatch) -> None:
        """Replace, atomically, every stream and reject row whose Kafka coordinates lie in
        ``batch.ranges`` with the batch's rows: re-landing a partition never duplicates, and a
        failure leaves the previous state untouched."""


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
