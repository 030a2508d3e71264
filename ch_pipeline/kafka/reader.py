"""Read exactly a stream partition's offset ranges from Kafka.

No consumer group and no committed offsets: the ranges themselves are the position (``assign``
with explicit offsets), so re-reading a partition returns the same messages for as long as Kafka
retains them, and a failed run loses nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from ch_pipeline.kafka.offsets import OffsetRange


# Connection-level consumer errors that librdkafka recovers from on its own.
_TRANSIENT = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT, KafkaError._RESOLVE})


# How the client fetches a range: start to end, as fast as it can decode, holding little ahead.
# The landing takes messages slower than the client fetches them, so the client's prefetch fills:
# by default it holds up to 100k messages per partition or 64 MiB, and once full it postpones the next
# fetch by a whole second (fetch.queue.backoff.ms), a stall each time the landing catches up.
RANGE_FETCH_SETTINGS = {
    "fetch.wait.max.ms": 50,
    "max.partition.fetch.bytes": 4 << 20,
    "fetch.max.bytes": 16 << 20,
    "queued.min.messages": 20_000,
    "queued.max.messages.kbytes": 16 << 10,
    "fetch.queue.backoff.ms": 10,
}


class RangeNotAvailable(RuntimeError):
    """Some offsets of the range are not (or no longer) in Kafka."""


def read_ranges(
    config: Mapping[str, str],
    topic: str,
    ranges: Sequence[OffsetRange],
    timeout: float = 60.0,
    chunk: int = 10_000,
) -> Iterator[list[Message]]:
    """Yield the messages of ``ranges`` in chunks; each offset at most once, none outside the ranges.

    A range is complete when a message at or past its last offset arrives, or the end of the
    partition lies past it (offsets taken by transaction markers or compaction never arrive).
    """
    consumer = Consumer(
        {
            **config,
            "group.id": "ch-pipeline-range-reader",  # required by the client; never joined or committed
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            # Never jump elsewhere: an offset out of range is an error, not a silent reset.
            "auto.offset.reset": "error",
            **RANGE_FETCH_SETTINGS,
        }
    )
    try:
        by_partition = {r.partition: r for r in ranges}
        _check_retained(consumer, topic, ranges, timeout)
        consumer.assign([TopicPartition(topic, r.partition, r.first) for r in ranges])
        pending = set(by_partition)
        next_offset = {r.partition: r.first for r in ranges}
        deadline = time.monotonic() + timeout
        while pending:
            batch = consumer.consume(num_messages=_batch_size(chunk, by_partition, next_offset, pending), timeout=0.5)
            messages: list[Message] = []
            for message in batch:
                error = message.error()
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    if error.code() in _TRANSIENT and not error.fatal():
                        continue  # the client reconnects by itself; the stall timer bounds the wait
                    raise KafkaException(error)
                partition = message.partition()
                wanted = by_partition[partition]
                if error is None:
                    offset = message.offset()
                    if partition in pending and offset <= wanted.last:
                        messages.append(message)
                        next_offset[partition] = offset + 1
                    if offset >= wanted.last:
                        pending.discard(partition)
                elif message.offset() > wanted.last:
                    pending.discard(partition)  # end of partition past the range: nothing more to wait for
                elif partition in pending:
                    raise RangeNotAvailable(
                        f"{topic} partition {partition} ends at offset {message.offset()}, "
                        f"before the end of range {wanted}: was the topic recreated?"
                    )
            if messages:
                yield messages
            if batch:
                deadline = time.monotonic() + timeout  # progress: restart the stall timer
            elif time.monotonic() > deadline:
                raise RangeNotAvailable(f"no data from {topic} partitions {sorted(pending)} for {timeout}s: is Kafka up?")
            done = set(by_partition) - pending
            if done and pending:
                consumer.pause([TopicPartition(topic, p) for p in done])  # stop fetching past a finished range
    finally:
        consumer.close()


def _batch_size(chunk: int, by_partition: dict[int, OffsetRange], next_offset: dict[int, int], pending: set[int]) -> int:
    """How many messages to ask ``consume`` for: a chunk, or fewer when fewer are still missing. A
    batch returns early only once it is full, so asking for more than the range still holds makes
    the read of its last messages wait out the whole consume timeout. Offsets that never arrive
    (transaction markers, compaction) only make this an upper bound: the next call asks again."""
    missing = sum(by_partition[p].last - next_offset[p] + 1 for p in pending)
    return max(1, min(chunk, missing))


def _check_retained(consumer: Consumer, topic: str, ranges: Sequence[OffsetRange], timeout: float) -> None:
    """Fail clearly if retention already deleted part of a range (re-materializing an old partition)."""
    for r in ranges:
        low, _ = consumer.get_watermark_offsets(TopicPartition(topic, r.partition), timeout=timeout)
        if low > r.first:
            raise RangeNotAvailable(
                f"{topic} partition {r.partition} now starts at offset {low}: offsets {r.first}-{min(low, r.last + 1) - 1} "
                f"of {r} were deleted by retention, so this stream partition can no longer be re-materialized"
            )
