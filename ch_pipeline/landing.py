"""Kafka -> the warehouse: read exactly a landing's offset ranges and land them.

Between ``kafka`` (the read) and ``warehouse`` (the parsing and the tables): the stream asset reads
a landing's messages here as raw Arrow chunks and hands them to whichever warehouse is configured
(``Warehouse.land_messages``). The read runs on its own thread, at most ``READ_AHEAD_CHUNKS``
chunks ahead of the warehouse, so the Kafka read overlaps the parse and write (DuckDB releases the
GIL) and memory stays bounded by a few chunks (docs/architecture.md §11).
"""

from __future__ import annotations

import gc
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TypeVar

import pyarrow as pa

from ch_pipeline.companies_house.streams import COMPANIES, STREAMS, StreamSpec
from ch_pipeline.kafka.offsets import OffsetRange, parse_partition_key
from ch_pipeline.kafka.reader import read_ranges
from ch_pipeline.warehouse.landing import LandingSummary, Warehouse

# Raw chunks read but not yet taken by the warehouse.
READ_AHEAD_CHUNKS = 2

T = TypeVar("T")


def raw_chunks(kafka_config: Mapping[str, str], topic: str, ranges: Sequence[OffsetRange]) -> Iterator[pa.Table]:
    """The messages of ``ranges`` as Arrow tables in ``stream_rows.RAW_SCHEMA``, one per chunk read."""
    from ch_pipeline.warehouse.stream_rows import raw_messages_table

    for messages in read_ranges(kafka_config, topic, ranges):
        yield raw_messages_table(messages)


@contextmanager
def read_ahead(source: Iterable[T], depth: int = READ_AHEAD_CHUNKS) -> Iterator[Iterator[T]]:
    """``source``'s items, produced on a thread at most ``depth`` ahead of the caller; its error is
    raised in the caller. Leaving the block stops the thread and closes ``source`` (on that thread)."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(source)
        try:
            for item in iterator:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            put((None, exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def consume() -> Iterator[T]:
        while True:
            item, error = items.get()
            if error is not None:
                raise error
            if item is end:
                return
            yield item

    thread = threading.Thread(target=produce, name="landing-read", daemon=True)
    thread.start()
    try:
        yield consume()
    finally:
        stop.set()
        thread.join()


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the block. A read makes a Python object per message
    (confluent-kafka's ``Message``), each tracked by the collector, and the collections they trigger
    scan every long-lived object of a run process (Dagster's, ~150k); the messages hold no cycles,
    so reference counting frees them all the same."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def land_stream_partition(
    kafka_config: Mapping[str, str], topic: str, stream_partition: str, warehouse: Warehouse,
    stream: StreamSpec = STREAMS[COMPANIES],
) -> LandingSummary:
    """Read exactly the offsets named by ``stream_partition`` of ``stream``'s topic and land them in
    ``warehouse``, replacing whatever was landed at those offsets (one transaction)."""
    ranges = parse_partition_key(stream_partition)
    now = datetime.now(timezone.utc)
    with gc_paused(), read_ahead(raw_chunks(kafka_config, topic, ranges)) as chunks:
        return warehouse.land_messages(stream_partition, ranges, chunks, now, stream)

