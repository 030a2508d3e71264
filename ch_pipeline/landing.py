"""Kafka -> a ``LandingBatch``: read exactly a landing's offset ranges and parse them.

Between ``kafka`` (the read) and ``warehouse`` (the parsing and the tables): the stream asset reads
a batch here, then hands it to whichever warehouse is configured (``Warehouse.land``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone

from ch_pipeline.companies_house.streams import COMPANIES, STREAMS, StreamSpec
from ch_pipeline.kafka.offsets import parse_partition_key
from ch_pipeline.kafka.reader import read_ranges
from ch_pipeline.warehouse.landing import LandingBatch


def read_stream_partition(
    kafka_config: Mapping[str, str], topic: str, stream_partition: str, stream: StreamSpec = STREAMS[COMPANIES]
) -> LandingBatch:
    """Read exactly the offsets named by ``stream_partition`` of ``stream``'s topic and parse them into
    a batch: the companies parser for companies, the envelope parser configured by the spec otherwise."""
    from ch_pipeline.warehouse.envelope_rows import envelope_parser
    from ch_pipeline.warehouse.schema import arrow_schema, landing_columns
    from ch_pipeline.warehouse.stream_rows import StreamBatchBuilder

    ranges = parse_partition_key(stream_partition)
    now = datetime.now(timezone.utc)
    if stream.name == COMPANIES:
        builder = StreamBatchBuilder(stream_partition, ingested_at=now)
    else:
        builder = StreamBatchBuilder(stream_partition, now, envelope_parser(stream), arrow_schema(landing_columns(stream)))
    for messages in read_ranges(kafka_config, topic, ranges):
        builder.add(messages)
    return LandingBatch(stream_partition, ranges, builder.stream_table(), builder.rejects_table(), builder.bytes, stream)
