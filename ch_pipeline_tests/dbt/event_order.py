"""A stream history made of the cases the order of one company's events must get right (issue 16,
item 1), as Companies House envelopes with their Kafka coordinates and timestamps, landed through the
real parser and warehouse landing. Used by test_event_order.py on DuckDB and on the BigQuery emulator.

The order (README "Order of a company's events"): `published_at`, never later than the second the
event reached Kafka; then `timepoint`; then, within one Kafka partition, the offset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pyarrow as pa

from ch_pipeline.companies_house.events import event_bytes, final_companies
from ch_pipeline.kafka.offsets import OffsetRange
from ch_pipeline.warehouse.landing import LandingBatch
from ch_pipeline.warehouse.stream_rows import RAW_SCHEMA, parse_raw_messages

T0 = datetime(2026, 11, 20, 9, 0, 0, tzinfo=timezone.utc)
FAR_FUTURE = datetime(2099, 1, 1, tzinfo=timezone.utc)


@dataclass
class Message:
    number: str
    name: str | None  # None: a `deleted` event
    published_at: datetime
    timepoint: int
    partition: int
    offset: int
    kafka_timestamp: datetime
    status: str = "active"

    def envelope(self) -> dict:
        event = {
            "timepoint": self.timepoint,
            "published_at": self.published_at.strftime("%Y-%m-%dT%H:%M:%S"),
            "type": "deleted" if self.name is None else "changed",
        }
        envelope: dict = {"resource_kind": "company-profile", "resource_uri": f"/company/{self.number}", "resource_id": self.number}
        if self.name is not None:
            envelope["data"] = {
                "company_name": self.name,
                "company_number": self.number,
                "company_status": self.status,
                "date_of_creation": "2010-04-01",
                "registered_office_address": {"postal_code": "EH1 2NG"},
            }
        envelope["event"] = event
        return envelope


@dataclass
class Scenario:
    """Four batches over six bulk companies; `expected[i]` is each company's core name after batch i
    (None: no row). Batches 0-1 are in Kafka partition 0 (the topic had one partition); then the topic
    grows to two partitions and most of these companies' keys hash to partition 1."""

    numbers: list[str]
    batches: list[list[Message]] = field(default_factory=list)
    expected: list[dict[str, str | None]] = field(default_factory=list)
    next_offset: dict[int, int] = field(default_factory=lambda: {0: 0, 1: 0})
    next_timepoint: int = 1
    clock: datetime = T0 + timedelta(hours=3, milliseconds=400)  # when events reach Kafka (a second apart)

    def __post_init__(self) -> None:
        self.x, self.d, self.e, self.f, self.r, self.same = self.numbers[:6]
        self._build()

    def send(self, number: str, name: str | None, published_at: datetime, partition: int,
             timepoint: int | None = None, kafka_timestamp: datetime | None = None) -> Message:  # fmt: skip
        if timepoint is None:
            timepoint, self.next_timepoint = self.next_timepoint, self.next_timepoint + 1
        self.clock += timedelta(seconds=1)
        published_at = published_at.replace(microsecond=0)  # the API's resolution
        message = Message(number, name, published_at, timepoint, partition, self.next_offset[partition],
                          kafka_timestamp or self.clock)  # fmt: skip
        self.next_offset[partition] += 1
        return message

    def _build(self) -> None:
        x, d, e, f, r, same = self.x, self.d, self.e, self.f, self.r, self.same
        day_before = T0 - timedelta(days=1)
        # Batch 0: every company's first event (a core built from it is the "old shape" test's start).
        self.batches.append([self.send(n, f"{label} ORIGINAL", day_before, 0) for n, label in
                             zip((x, d, e, f, r), "XDEFR")] + [self.send(same, "SAME ORIGINAL", T0, 0)])  # fmt: skip
        self.expected.append({x: "X ORIGINAL", d: "D ORIGINAL", e: "E ORIGINAL", f: "F ORIGINAL", r: "R ORIGINAL", same: "SAME ORIGINAL"})

        # Batch 1, partition 0.
        batch = [
            self.send(x, "X FIRST NAME", T0, 0),
            self.send(d, "D CHANGED", T0 + timedelta(minutes=10), 0),
            self.send(e, "E CHANGED", T0 + timedelta(minutes=19), 0),
            self.send(f, "F BEFORE", T0 + timedelta(minutes=30), 0),
            self.send(r, "R OLD NAME", T0 + timedelta(hours=1), 0),
            self.send(r, "R NEW NAME", T0 + timedelta(hours=1, minutes=5), 0),
            # published_at far in the future: ordered as of the second it reached Kafka.
            self.send(f, "F FROM THE FUTURE", FAR_FUTURE, 0),
        ]
        self.e_changed, self.f_future = batch[2], batch[-1]
        self.batches.append(batch)
        self.expected.append({x: "X FIRST NAME", d: "D CHANGED", e: "E CHANGED", f: "F FROM THE FUTURE", r: "R NEW NAME", same: "SAME ORIGINAL"})

        # Batch 2: the topic has two partitions now.
        self.batches.append([
            # The next timepoint in the same second, now at p1:0 (offset 0 < X FIRST NAME's offset in p0).
            self.send(x, "X SECOND NAME", T0, 1),
            # Deleted in the same second as its change, across partitions.
            self.send(d, None, T0 + timedelta(minutes=10), 1),
            self.send(e, None, T0 + timedelta(minutes=19), 1),
            # The API re-sends an older event with a new timepoint: the newer change (later published_at) stays.
            self.send(r, "R OLD NAME", T0 + timedelta(hours=1), 1),
            # Published after F FROM THE FUTURE reached Kafka: the future published_at no longer blocks it.
            self.send(f, "F NOW", self.f_future.kafka_timestamp + timedelta(seconds=30), 1,
                      kafka_timestamp=self.f_future.kafka_timestamp + timedelta(seconds=31)),
            # Same second, same partition, later timepoint (and offset): the later event wins.
            self.send(same, "SAME SECOND", T0, 0),
        ])  # fmt: skip
        self.expected.append({x: "X SECOND NAME", d: None, e: None, f: "F NOW", r: "R NEW NAME", same: "SAME SECOND"})

        # Batch 3: a copy of E's older change (same timepoint) lands late in partition 0, at an offset
        # above E's deletion in partition 1: the deletion stays.
        copy = self.send(e, "E CHANGED", self.e_changed.published_at, 0, timepoint=self.e_changed.timepoint)
        self.batches.append([copy])
        self.expected.append(dict(self.expected[-1]))

    def landed(self, upto: int) -> list[Message]:
        return [m for batch in self.batches[: upto + 1] for m in batch]

    def truth(self, upto: int) -> dict[str, str | None]:
        """The Python ground truth (events.final_companies, given each event's Kafka timestamp)."""
        messages = self.landed(upto)
        by_id = {}
        envelopes = []
        for message in sorted(messages, key=lambda m: (m.partition, m.offset)):
            envelope = message.envelope()
            by_id[id(envelope)] = message.kafka_timestamp
            envelopes.append(envelope)
        final = final_companies(envelopes, received_at=lambda envelope: by_id[id(envelope)])
        return {n: (final[n]["company_name"] if n in final else None) for n in self.numbers[:6]}


def landing_batch(messages: list[Message], stream_partition: str, ingested_at: datetime | None = None) -> LandingBatch:
    """The messages as the stream asset lands them: the real parser, one offset range per partition."""
    columns = {
        "kafka_partition": [m.partition for m in messages],
        "kafka_offset": [m.offset for m in messages],
        "kafka_timestamp": [m.kafka_timestamp for m in messages],
        "kafka_key": [m.number.encode() for m in messages],
        "value": [event_bytes(m.envelope()) for m in messages],
    }
    raw = pa.Table.from_pydict(columns, schema=RAW_SCHEMA)
    rows, rejects = parse_raw_messages(raw, stream_partition, ingested_at or datetime.now(timezone.utc))
    assert rejects.num_rows == 0 and rows.num_rows == len(messages)
    ranges = []
    for partition in sorted({m.partition for m in messages}):
        offsets = [m.offset for m in messages if m.partition == partition]
        ranges.append(OffsetRange(partition, min(offsets), max(offsets)))
    return LandingBatch(stream_partition, ranges, rows, rejects)
