"""Kafka offset ranges: the landing key, batch cutting and end-offset probing.

A landing (one run of ``company_house_stream``; the key is its run key) is an immutable set of
inclusive offset ranges, one per Kafka partition, named by its key ``p0:1200-1349,p1:800-899``.
This module holds the one formatter and the one parser of that key.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, KafkaException, TopicPartition

_RANGE = re.compile(r"p(\d+):(\d+)-(\d+)")


@dataclass(frozen=True, order=True)
class OffsetRange:
    """Offsets ``first``..``last`` (both inclusive) of one Kafka partition."""

    partition: int
    first: int
    last: int

    def __post_init__(self) -> None:
        if self.partition < 0 or self.first < 0 or self.last < self.first:
            raise ValueError(f"invalid offset range p{self.partition}:{self.first}-{self.last}")

    @property
    def size(self) -> int:
        """Offsets spanned (= messages, unless compaction or transaction markers left gaps)."""
        return self.last - self.first + 1

    @property
    def next_offset(self) -> int:
        return self.last + 1

    def __str__(self) -> str:
        return f"p{self.partition}:{self.first}-{self.last}"


def format_partition_key(ranges: Iterable[OffsetRange]) -> str:
    """``p0:1200-1349,p1:800-899``: ranges sorted by Kafka partition, at most one per partition."""
    ordered = sorted(ranges)
    partitions = [r.partition for r in ordered]
    if not ordered or len(set(partitions)) != len(partitions):
        raise ValueError(f"a stream partition needs one range per Kafka partition, got {ordered}")
    return ",".join(str(r) for r in ordered)


def parse_partition_key(key: str) -> list[OffsetRange]:
    """The inverse of ``format_partition_key``; a key it did not produce is an error."""
    try:
        ranges = [OffsetRange(*map(int, _RANGE.fullmatch(part).groups())) for part in key.split(",")]  # type: ignore[union-attr]
    except (AttributeError, ValueError) as exc:
        raise ValueError(f"not a stream partition key: {key!r} (expected e.g. 'p0:1200-1349,p1:800-899')") from exc
    if format_partition_key(ranges) != key:
        raise ValueError(f"not a canonical stream partition key: {key!r}")
    return ranges


def cut_batches(starts: Mapping[int, int], ends: Mapping[int, int], max_messages: int) -> list[list[OffsetRange]]:
    """Cut the offsets ``starts[p]`` .. ``ends[p]`` (exclusive) into batches of at most ``max_messages``.

    The budget counts offsets across all Kafka partitions of a batch. Partitions are taken in
    order, so each Kafka partition's ranges are contiguous across batches: no gap, no overlap.
    """
    if max_messages < 1:
        raise ValueError("max_messages must be at least 1")
    batches: list[list[OffsetRange]] = []
    current: list[OffsetRange] = []
    room = max_messages
    for partition in sorted(ends):
        first, end = starts.get(partition, 0), ends[partition]
        while first < end:
            take = min(room, end - first)
            current.append(OffsetRange(partition, first, first + take - 1))
            first += take
            room -= take
            if room == 0:
                batches.append(current)
                current, room = [], max_messages
    if current:
        batches.append(current)
    return batches


def next_offsets(batches: Iterable[list[OffsetRange]]) -> dict[int, int]:
    """The next offset per Kafka partition after ``batches`` (the sensor cursor's update)."""
    return {r.partition: r.next_offset for batch in batches for r in batch}


@dataclass(frozen=True)
class NewestMessage:
    """The last message of one Kafka partition, as the offset probe saw it."""

    partition: int
    offset: int
    value: bytes | None
    timestamp_ms: int | None  # the Kafka message timestamp (ms since the epoch), None when not set


@dataclass(frozen=True)
class TopicProbe:
    """Where a topic stands now, per Kafka partition: first retained offset, end offset (the next
    to be written), and the newest message (absent for an empty partition)."""

    lows: dict[int, int]
    ends: dict[int, int]
    newest: dict[int, NewestMessage]


class TopicMissing(LookupError):
    """The topic does not exist on the cluster."""


class KafkaUnavailable(ConnectionError):
    """The cluster did not answer (down, unreachable, or refusing our credentials)."""


def topic_partitions(consumer: Consumer, topic: str, timeout: float) -> list[int]:
    """The topic's partition ids now (partitions added later show up on the next call)."""
    metadata = consumer.list_topics(topic, timeout=timeout)
    found = metadata.topics.get(topic)
    if found is None or found.error is not None and found.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
        raise TopicMissing(f"Kafka topic {topic!r} does not exist: start the producer or create it")
    if found.error is not None:
        raise KafkaException(found.error)
    return sorted(found.partitions)


def probe_offsets(config: Mapping[str, str], topic: str, timeout: float = 10.0) -> tuple[dict[int, int], dict[int, int]]:
    """(first retained offset, end offset = next offset to be written) per Kafka partition."""
    probe = probe_topic(config, topic, timeout)
    return probe.lows, probe.ends


def probe_topic(config: Mapping[str, str], topic: str, timeout: float = 10.0) -> TopicProbe:
    """Each Kafka partition's first retained offset, end offset and newest message.

    The reported high watermark is exact on Apache Kafka, but the local broker reports the first
    offset of the last record batch + 1 (docs/architecture.md §9). So the high watermark is used only as a lower
    bound: a short-lived consumer reads forward from ``high - 1`` to the end-of-partition event,
    whose offset is the true end on both. On Kafka that reads at most one message per partition;
    on the local broker at most the last record batch. Never the backlog, and independent of any
    cursor (the local broker never answers a fetch past the end, where Kafka would say
    OFFSET_OUT_OF_RANGE, so starting from a cursor past the end would wait forever). The last
    message that read passes is the partition's newest, which the stream watches read
    (``ch_pipeline.defs.watch``) at no extra round trip.
    """
    errors: list[KafkaError] = []
    consumer = Consumer(
        {
            **config,
            "group.id": "ch-pipeline-offset-probe",  # required by the client; never joined or committed
            # A broker that is down must not flood the log every tick: errors are collected and
            # reported once, in the exception (the sensor's skip reason).
            "error_cb": errors.append,
            "log_level": 2,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
            # The probe only needs offsets: keep what one fetch brings back small.
            "fetch.max.bytes": 1 << 20,
            "max.partition.fetch.bytes": 1 << 20,
            "socket.timeout.ms": int(timeout * 1000),
        }
    )
    try:
        return _probe(consumer, topic, timeout)
    except KafkaException as exc:
        cause = errors[-1].str() if errors else str(exc)
        raise KafkaUnavailable(f"Kafka at {config.get('bootstrap.servers')} did not answer: {cause}") from exc
    finally:
        consumer.close()


def _probe(consumer: Consumer, topic: str, timeout: float) -> TopicProbe:
    partitions = topic_partitions(consumer, topic, timeout)
    lows: dict[int, int] = {}
    ends: dict[int, int] = {}
    starts: list[TopicPartition] = []
    for partition in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
        lows[partition] = low
        ends[partition] = max(high, low)
        start = max(high - 1, low)
        starts.append(TopicPartition(topic, partition, start))
    read_ends, newest = _read_to_eof(consumer, starts, timeout)
    ends.update(read_ends)
    return TopicProbe(lows, ends, newest)


def _read_to_eof(consumer: Consumer, starts: list[TopicPartition], timeout: float) -> tuple[dict[int, int], dict[int, NewestMessage]]:
    """End offset and newest message per partition: where the end-of-partition event is seen, and the
    last message before it, reading from ``starts``."""

    consumer.assign(starts)
    pending = {tp.partition for tp in starts}
    ends = {tp.partition: tp.offset for tp in starts}
    newest: dict[int, NewestMessage] = {}
    deadline = time.monotonic() + timeout
    while pending:
        if time.monotonic() > deadline:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"no end-of-partition event for partitions {sorted(pending)}"))
        for message in consumer.consume(num_messages=10_000, timeout=0.2):
            error = message.error()
            if error is None:
                ends[message.partition()] = max(ends[message.partition()], message.offset() + 1)
                _keep_newest(newest, message)
            elif error.code() == KafkaError._PARTITION_EOF:
                ends[message.partition()] = max(ends[message.partition()], message.offset())
                pending.discard(message.partition())
            elif error.fatal() or not error.retriable():
                raise KafkaException(error)
    return ends, newest


def _keep_newest(newest: dict[int, NewestMessage], message) -> None:
    kept = newest.get(message.partition())
    if kept is not None and kept.offset >= message.offset():
        return
    kind, timestamp = message.timestamp()
    known = kind != TIMESTAMP_NOT_AVAILABLE and timestamp >= 0
    newest[message.partition()] = NewestMessage(message.partition(), message.offset(), message.value(), timestamp if known else None)
