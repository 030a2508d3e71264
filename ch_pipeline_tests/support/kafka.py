"""Kafka helpers for tests: read a whole topic, a message's timepoint, a stand-in message, offset ranges."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaError, TopicPartition

PARTITIONS = 3  # of the topics the producer tests create


def read_topic(bootstrap: str, topic: str, partitions: int = PARTITIONS, timeout: float = 30) -> list:
    """Every message of ``topic``, read by assign from offset 0 until each partition reports its end.

    The end-of-partition event, not get_watermark_offsets (wrong on the local broker, docs/architecture.md §9).
    """
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False, "enable.partition.eof": True}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    messages, at_end = [], set()
    deadline = time.monotonic() + timeout
    try:
        while len(at_end) < partitions and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                if message.error() is None:
                    messages.append(message)
                    at_end.discard(message.partition())
                elif message.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition())
                else:
                    raise AssertionError(message.error())
    finally:
        consumer.close()
    assert len(at_end) == partitions, "did not reach the end of every partition"
    return messages


def timepoint_header(message) -> int:
    return int(dict(message.headers())["timepoint"])


class FakeMessage:
    """The five accessors of confluent_kafka.Message that the builder reads (Message has no public constructor)."""

    def __init__(self, partition, offset, value, key=None, timestamp=(1, 1714554000000)):
        self._args = partition, offset, value, key, timestamp

    def partition(self):
        return self._args[0]

    def offset(self):
        return self._args[1]

    def value(self):
        return self._args[2]

    def key(self):
        return self._args[3]

    def timestamp(self):
        return self._args[4]


def assert_contiguous(batches, starts, ends):
    """Every offset from start to end of each partition is in exactly one batch, in order."""
    position = dict(starts)
    for batch in batches:
        for r in batch:
            assert r.first == position[r.partition], f"gap or overlap at {r}"
            position[r.partition] = r.next_offset
    assert position == {p: ends[p] for p in position}
