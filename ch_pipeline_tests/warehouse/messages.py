"""Kafka message fixtures for the landing tests and benchmarks: events, flat records, malformed bytes.

Built here (not from the producer's generator) so these tests pin the message contract of
docs/architecture.md §4 on their own.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from confluent_kafka import Producer

BASE_TIME = datetime(2024, 5, 1, 9, 0, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Message:
    partition: int
    key: bytes | None
    value: bytes | None
    valid: bool  # whether it must land as a stream row (else a reject)


def company_number(i: int) -> str:
    return f"{i % 10_000_000:08d}" if i % 7 else f"SC{i % 1_000_000:06d}"


def company_event(i: int, event_type: str = "changed", published_at: datetime | None = None) -> dict:
    number = company_number(i)
    published = (published_at or BASE_TIME + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%S")
    event = {
        "resource_kind": "company-profile",
        "resource_uri": f"/company/{number}",
        "resource_id": number,
        "event": {"timepoint": 1000 + i, "published_at": published, "type": event_type},
    }
    if event_type == "changed":
        event["data"] = {
            "company_name": f"EXAMPLE {i} LIMITED",
            "company_number": number,
            "company_status": "active" if i % 5 else "dissolved",
            "date_of_creation": f"{1990 + i % 30}-{1 + i % 12:02d}-{1 + i % 28:02d}",
            "registered_office_address": {"postal_code": f"AB{i % 99} {i % 9}CD", "locality": "London"},
            "type": "ltd",
            "sic_codes": ["62020"],
            "etag": f"{i:040x}",
        }
    return event


def flat_record(i: int) -> dict:
    """The tutorial producer's record: six fields, "NA" for missing ones."""
    return {
        "company_name": f"FLAT {i} LTD",
        "company_number": company_number(i),
        "company_status": "active",
        "date_of_creation": "NA" if i % 2 else "2001-02-03",
        "postal_code": "NA" if i % 3 else "EC1A 1BB",
        "published_at": (BASE_TIME + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%S"),
    }


MALFORMED_VALUES = [
    b"not json at all",
    b"\xff\xfe\x00garbage",
    b"[1, 2, 3]",
    b'{"event": {"type": "changed", "published_at": "2024-01-01T00:00:00"}}',  # changed without data
    b'{"event": {"type": "exploded", "published_at": "2024-01-01T00:00:00"}, "data": {"company_number": "1"}}',
    b'{"event": {"type": "changed", "published_at": "yesterday"}, "data": {"company_number": "00000001"}}',
    b'{"event": {"type": "changed", "published_at": "2024-01-01T00:00:00"}, "data": {"company_number": "1", "date_of_creation": "31/12/2020"}}',
    b'{"company_name": "X", "company_number": "NA", "published_at": "2024-01-01T00:00:00"}',
    b'{"hello": "world"}',
    b'{"event": {"type": "changed", "published_at": "2024-01-01T00:00:00", "timepoint": "7"}, "data": {"company_number": "1"}}',
]


def corpus(total: int = 10_000, partitions: int = 2, malformed: int = 50, flat: int = 50, duplicates: int = 20, seed: int = 5) -> list[Message]:
    """``total`` messages: events (some deleted), ``flat`` tutorial records, ``malformed`` rejects
    (one a tombstone with a null value) and ``duplicates`` re-sent events, shuffled over partitions."""
    rng = random.Random(seed)
    events = total - malformed - flat - duplicates
    messages: list[tuple[bytes | None, bytes | None, bool]] = []
    for i in range(events):
        event = company_event(i, "deleted" if i % 97 == 0 else "changed")
        messages.append((company_number(i).encode(), json.dumps(event).encode(), True))
    for i in range(duplicates):
        messages.append(messages[rng.randrange(events)])
    for i in range(flat):
        record = flat_record(events + i)
        messages.append((record["company_number"].encode(), json.dumps(record).encode(), True))
    for i in range(malformed):
        value = None if i == 0 else MALFORMED_VALUES[i % len(MALFORMED_VALUES)]
        messages.append((None if i % 2 else b"bad", value, False))
    rng.shuffle(messages)
    return [Message(rng.randrange(partitions), key, value, valid) for key, value, valid in messages]


def produce(bootstrap_servers: str, topic: str, messages: list[Message]) -> dict[tuple[int, int], Message]:
    """Produce in order, idempotently; return each message by its (partition, offset)."""
    producer = Producer(
        {"bootstrap.servers": bootstrap_servers, "enable.idempotence": True, "acks": "all", "linger.ms": 20}
    )
    landed: dict[tuple[int, int], Message] = {}
    failures: list[str] = []

    def delivered(error, record, message=None):
        if error is not None:
            failures.append(str(error))
        else:
            landed[(record.partition(), record.offset())] = message

    for message in messages:
        while True:
            try:
                producer.produce(
                    topic, value=message.value, key=message.key, partition=message.partition,
                    on_delivery=lambda error, record, message=message: delivered(error, record, message),
                )  # fmt: skip
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(60)
    assert not failures, failures[:3]
    assert len(landed) == len(messages)
    return landed


def produce_filler(bootstrap_servers: str, topic: str, counts: dict[int, int], size: int = 100) -> None:
    """``counts[p]`` small messages on partition ``p``, fast (for backlog tests and benchmarks)."""
    producer = Producer({"bootstrap.servers": bootstrap_servers, "linger.ms": 50, "batch.num.messages": 10_000})
    value = b"x" * size
    for partition, count in counts.items():
        for _ in range(count):
            while True:
                try:
                    producer.produce(topic, value=value, partition=partition)
                    break
                except BufferError:
                    producer.poll(0.05)
    assert producer.flush(120) == 0
