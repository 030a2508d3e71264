"""A generated history of the stream, and the core table it must produce, computed in plain Python.

The ground truth knows nothing of the SQL: per company the newest event by (published_at, Kafka
offset; a missing published_at counts as oldest) decides: `changed` -> its row, `deleted` -> no row,
no event -> the bulk row.
"""

from __future__ import annotations

import csv
import json
import random
import re
import zlib
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow as pa

from ch_pipeline.companies_house.bulk_csv import BULK_STATUS_TO_STREAM
from ch_pipeline.warehouse.schema import STREAM_COLUMNS, STREAM_TABLE, arrow_schema, duckdb_ddl

KAFKA_PARTITIONS = 2
COMPANY_PROFILE = "company-profile"
EARLIEST = datetime.min.replace(tzinfo=timezone.utc)
STATUSES = ["active", "dissolved", "liquidation", "administration", "receivership", "voluntary-arrangement"]
CoreRow = tuple  # (company_name, company_status, date_of_creation, postal_code, month_of_creation)


@dataclass
class Event:
    company_number: str | None
    event_type: str
    published_at: datetime | None
    company_name: str | None = None
    company_status: str | None = None
    date_of_creation: date | None = None
    postal_code: str | None = None
    resource_kind: str = COMPANY_PROFILE
    kafka_partition: int = 0
    kafka_offset: int = -1

    @property
    def order(self) -> tuple[datetime, int]:
        return (self.published_at or EARLIEST, self.kafka_offset)

    def core_row(self) -> CoreRow:
        month = self.date_of_creation.replace(day=1) if self.date_of_creation else None
        return (self.company_name, self.company_status, self.date_of_creation, self.postal_code, month)


def kafka_partition_of(company_number: str | None) -> int:
    """Like Kafka's keyed partitioning: one company, one partition."""
    return zlib.crc32((company_number or "").encode()) % KAFKA_PARTITIONS


@dataclass
class StreamLog:
    """Assigns Kafka coordinates and remembers every event landed so far."""

    next_offset: dict[int, int] = field(default_factory=lambda: {p: 0 for p in range(KAFKA_PARTITIONS)})
    landed: list[Event] = field(default_factory=list)

    def place(self, event: Event) -> Event:
        event.kafka_partition = kafka_partition_of(event.company_number)
        event.kafka_offset = self.next_offset[event.kafka_partition]
        self.next_offset[event.kafka_partition] += 1
        return event

    def skip(self, partition: int, count: int) -> range:
        """Reserve offsets that will land later (an earlier range whose run finished late)."""
        start = self.next_offset[partition]
        self.next_offset[partition] += count
        return range(start, start + count)


# --- Ground truth ------------------------------------------------------------------------------


def parse_bulk_csv(path: Path) -> dict[str, CoreRow]:
    """The bulk file read with the csv module, cleaned by hand (independent of the SQL loader)."""
    rows: dict[str, CoreRow] = {}
    with path.open(encoding="utf-8", newline="") as stream:
        reader = csv.reader(stream)
        header = [name.strip() for name in next(reader)]
        at = {name: header.index(name) for name in ("CompanyName", "CompanyNumber", "CompanyStatus", "IncorporationDate", "RegAddress.PostCode")}
        for record in reader:
            number = record[at["CompanyNumber"]].strip().upper()
            name = record[at["CompanyName"]].strip() or None
            if not number or (number in rows and (rows[number][0] or "") >= (name or "")):
                continue  # a repeated number keeps the greatest name (the loader's rule)
            status = record[at["CompanyStatus"]].strip().lower()
            created = _dmy(record[at["IncorporationDate"]])
            postcode = re.sub(r"\s+", " ", record[at["RegAddress.PostCode"]].strip().upper()) or None
            rows[number] = (
                name,
                BULK_STATUS_TO_STREAM.get(status, re.sub(r"[^a-z0-9]+", "-", status) or None),
                created,
                postcode,
                created.replace(day=1) if created else None,
            )
    return rows


def _dmy(text: str) -> date | None:
    try:
        return datetime.strptime(text.strip(), "%d/%m/%Y").date()
    except ValueError:
        return None


def expected_core(bulk: dict[str, CoreRow], events: list[Event]) -> dict[str, CoreRow]:
    newest: dict[str, Event] = {}
    for event in events:
        if event.resource_kind != COMPANY_PROFILE or event.company_number is None:
            continue
        held = newest.get(event.company_number)
        if held is None or event.order > held.order:
            newest[event.company_number] = event
    core = dict(bulk)
    for number, event in newest.items():
        if event.event_type == "deleted":
            core.pop(number, None)
        else:
            core[number] = event.core_row()
    return core


# --- The warehouse side ------------------------------------------------------------------------


def create_stream_table(db_path: Path) -> None:
    with duckdb.connect(str(db_path)) as con:
        con.execute(duckdb_ddl(STREAM_TABLE, STREAM_COLUMNS))


def stream_rows(events: list[Event], stream_partition: str) -> pa.Table:
    """The rows the stream asset would land for these events."""
    now = datetime.now(timezone.utc)
    rows = [
        {
            "company_name": e.company_name,
            "company_number": e.company_number,
            "company_status": e.company_status,
            "date_of_creation": e.date_of_creation,
            "postal_code": e.postal_code,
            "published_at": e.published_at,
            "event_type": e.event_type,
            "timepoint": None,
            "resource_kind": e.resource_kind,
            "kafka_partition": e.kafka_partition,
            "kafka_offset": e.kafka_offset,
            "kafka_timestamp": now,
            "stream_partition": stream_partition,
            "ingested_at": now,
            "raw_event": json.dumps({"resource_kind": e.resource_kind, "company_number": e.company_number}),
        }
        for e in events
    ]
    return pa.Table.from_pylist(rows, schema=arrow_schema(STREAM_COLUMNS))


def land(db_path: Path, events: list[Event], stream_partition: str) -> None:
    """Land the events into DuckDB like the stream asset (replacing the partition's rows)."""
    batch = stream_rows(events, stream_partition)  # noqa: F841 (scanned by DuckDB by name)
    with duckdb.connect(str(db_path)) as con:
        con.execute(f"delete from {STREAM_TABLE} where stream_partition = ?", [stream_partition])
        con.execute(f"insert into {STREAM_TABLE} by name select * from batch")


def read_core(db_path: Path) -> dict[str, CoreRow]:
    with duckdb.connect(str(db_path), read_only=True) as con:
        rows = con.execute(
            "select company_number, company_name, company_status, date_of_creation, postal_code, month_of_creation "
            "from company_house_core"
        ).fetchall()
    return {number: tuple(rest) for number, *rest in rows}


def read_table(db_path: Path, table: str, order_by: str) -> list[tuple]:
    with duckdb.connect(str(db_path), read_only=True) as con:
        return con.execute(f"select * from {table} order by {order_by}").fetchall()


def read_watermark(db_path: Path) -> dict[int, int]:
    with duckdb.connect(str(db_path), read_only=True) as con:
        return dict(con.execute("select kafka_partition, last_offset from get_last_timestamp").fetchall())


# --- The generated history ---------------------------------------------------------------------


class History:
    """Five stream batches over a bulk baseline, each with the cases the tutorial got wrong."""

    def __init__(self, bulk: dict[str, CoreRow], seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.bulk_numbers = sorted(bulk)
        self.log = StreamLog()
        self.clock = datetime(2026, 11, 1, 9, 0, tzinfo=timezone.utc)
        self.new_company_serial = 0
        self.late_range: list[Event] = []

    def tick(self, seconds: int = 1) -> datetime:
        self.clock += timedelta(seconds=seconds)
        return self.clock

    def changed(self, number: str, published_at: datetime | None = None, **fields) -> Event:
        rng = self.rng
        values = {
            "company_name": f"{rng.choice(['NEW', 'RENAMED', 'UPDATED'])} {number} LIMITED",
            "company_status": rng.choice(STATUSES),
            "date_of_creation": date(2000, 1, 1) + timedelta(days=rng.randrange(9000)),
            "postal_code": rng.choice(["SW1A 1AA", "M1 1AE", "EH1 2NG", None]),
            **fields,
        }
        return Event(number, "changed", published_at if published_at is not None else self.tick(), **values)

    def deleted(self, number: str, published_at: datetime | None = None) -> Event:
        return Event(number, "deleted", published_at if published_at is not None else self.tick())

    def new_number(self) -> str:
        self.new_company_serial += 1
        return f"NC{self.new_company_serial:06d}"

    def place(self, events: list[Event]) -> list[Event]:
        return [self.log.place(e) for e in events]

    # Each batch returns the events that land in it, in offset order per partition.

    def batch_1(self) -> list[Event]:
        pick = self.rng.sample(self.bulk_numbers, 530)
        events = [self.changed(n) for n in pick[:500]]
        events += [self.changed(self.new_number()) for _ in range(100)]
        events += [self.deleted(n) for n in pick[500:]]
        self.deleted_in_batch_1 = pick[500:]
        self.updated_in_batch_1 = pick[:500]
        return self.place(events)

    def batch_2(self) -> list[Event]:
        a, b, c, d = self.rng.sample(self.bulk_numbers, 4)
        self.two_in_one_batch = a
        t = self.tick(60)
        events = [
            # Two events for one company in one batch (MERGE must see one source row).
            self.changed(a, t, company_status="active"),
            self.changed(a, t + timedelta(seconds=5), company_status="liquidation"),
            # Changed then deleted in one batch.
            self.changed(b, t),
            self.deleted(b, t + timedelta(seconds=6)),
            # Equal published_at: the higher offset wins.
            self.changed(c, t + timedelta(seconds=7), company_name="TIE FIRST LTD"),
            self.changed(c, t + timedelta(seconds=7), company_name="TIE SECOND LTD"),
            # No published_at (bad input): a new company is still taken.
            self.changed(self.new_number(), published_at=None),
            # Not a company-profile event: ignored.
            Event(d, "changed", self.tick(), company_name="OFFICER EVENT", resource_kind="company-officers"),
        ]
        events += [self.changed(n) for n in self.rng.sample(self.bulk_numbers, 200)]
        return self.place(events)

    def batch_3(self) -> list[Event]:
        a = self.two_in_one_batch
        resurrect_candidate, recreated = self.deleted_in_batch_1[:2]
        updated = self.updated_in_batch_1[0]
        early = self.clock - timedelta(days=1)
        events = [
            # An older event arriving after a newer one: ignored.
            self.changed(a, early, company_status="dissolved"),
            # An older `changed` after a `deleted`: must not resurrect the company.
            self.changed(resurrect_candidate, early),
            # A newer `changed` after a `deleted`: the company is back.
            self.changed(recreated, company_name="BACK AGAIN LTD"),
            # An older `deleted` after a newer update: the company stays.
            self.deleted(updated, early),
        ]
        events += [self.changed(n) for n in self.rng.sample(self.bulk_numbers, 150)]
        placed = self.place(events)
        # Offsets reserved here land in batch 5: an earlier range whose run finished late.
        late_numbers = [n for n in self.rng.sample(self.bulk_numbers, 200) if kafka_partition_of(n) == 0][:20]
        reserved = self.log.skip(0, len(late_numbers))
        self.late_range = []
        for number, offset in zip(late_numbers, reserved):
            event = self.changed(number)
            event.kafka_partition, event.kafka_offset = 0, offset
            self.late_range.append(event)
        placed += self.place([self.changed(n) for n in self.rng.sample(self.bulk_numbers, 50)])
        return placed

    def batch_4(self) -> list[Event]:
        """No events for the company set: only other resource kinds."""
        numbers = self.rng.sample(self.bulk_numbers, 30)
        return self.place([Event(n, "changed", self.tick(), resource_kind="company-charges") for n in numbers])

    def batch_5(self) -> list[Event]:
        events = [self.changed(n) for n in self.rng.sample(self.bulk_numbers, 300)]
        events += [self.deleted(n) for n in self.rng.sample(self.bulk_numbers, 40)]
        return self.place(events)
