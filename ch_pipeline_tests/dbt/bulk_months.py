"""Three monthly bulk files interleaved with stream events (issue 16, item 2), and the core they must
give, computed here in Python from the rules (README "Monthly bulk refresh"), independently of the SQL.

Used by test_bulk_months.py on DuckDB and on the BigQuery emulator. Each step is a file (loaded, then
one dbt build reconciles the core with it) or a batch of events (landed, then one dbt build).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

from ch_pipeline.companies_house.bulk_csv import BULK_STATUS_TO_STREAM, DATE_FORMAT, HEADER, published_name
from ch_pipeline_tests.dbt.event_order import Message

CLOSED = {"dissolved", "converted-closed", "removed", "closed"}
# A stream status -> a bulk status the loader maps back to it (BULK_STATUS_TO_STREAM, inverted).
TO_BULK_STATUS = {stream: bulk for bulk, stream in reversed(list(BULK_STATUS_TO_STREAM.items()))}


@dataclass
class File:
    file_date: date
    companies: dict[str, tuple[str, str]]  # number -> (name, status)

    @property
    def instant(self) -> datetime:
        return datetime.combine(self.file_date, time(), tzinfo=timezone.utc)

    def write(self, folder: Path) -> Path:
        """The file as published, under its published name."""
        companies = {number: {"company_name": name, "company_status": status, "date_of_creation": "2010-04-01",
                              "postal_code": "EH1 2NG"} for number, (name, status) in self.companies.items()}  # fmt: skip
        return write_register(folder / published_name(self.file_date, ".csv"), companies)


def write_register(path: Path, companies: dict[str, dict]) -> Path:
    """Companies (number -> the core's columns, stream statuses) as a published bulk file: the header as
    published, every field quoted, DD/MM/YYYY dates, the bulk file's statuses."""
    at = {name.strip(): index for index, name in enumerate(HEADER)}
    with path.open("w", encoding="utf-8", newline="") as stream:
        stream.write(",".join(HEADER) + "\r\n")
        writer = csv.writer(stream, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
        for number, company in companies.items():
            row = [""] * len(HEADER)
            created = company["date_of_creation"]
            row[at["CompanyNumber"]], row[at["CompanyName"]] = number, company["company_name"] or ""
            row[at["CompanyStatus"]] = TO_BULK_STATUS.get(company["company_status"], company["company_status"] or "")
            row[at["IncorporationDate"]] = date.fromisoformat(str(created)[:10]).strftime(DATE_FORMAT) if created else ""
            row[at["RegAddress.PostCode"]] = company["postal_code"] or ""
            writer.writerow(row)
    return path


@dataclass
class Events:
    messages: list[Message]


def event(number: str, name: str | None, published: str, status: str = "active") -> Message:
    """A company-profile event published at `published` (reaching Kafka a second later); the Kafka
    coordinates and timepoints are assigned by `sequence()`."""
    at = datetime.fromisoformat(published).replace(tzinfo=timezone.utc)
    return Message(number, name, at, 0, 0, 0, at + timedelta(seconds=1), status)


def sequence() -> list[File | Events]:
    """Updates, deletions, restores, companies appearing and disappearing, late events, over three
    files (September, October, November 2026)."""
    steps: list[File | Events] = [
        File(date(2026, 9, 1), {"A": ("A SEP FILE", "active"), "B": ("B SEP FILE", "active"), "C": ("C SEP FILE", "active"),
                                "D": ("D SEP FILE", "active"), "E": ("E SEP FILE", "dissolved"), "F": ("F SEP FILE", "active")}),
        Events([event("A", "A SEP EVENT", "2026-09-10T10:00:00"), event("B", None, "2026-09-11T10:00:00"),
                event("G", "G SEP EVENT", "2026-09-12T10:00:00")]),
        # B restored by the newer file; C and E absent (C live: gone; E dissolved: kept); D dissolved; H new.
        File(date(2026, 10, 1), {"A": ("A OCT FILE", "active"), "B": ("B OCT FILE", "active"), "D": ("D OCT FILE", "dissolved"),
                                 "F": ("F SEP FILE", "active"), "G": ("G OCT FILE", "active"), "H": ("H OCT FILE", "active")}),
        # Late events older than the October file: C (gone) and I (unknown) stay out, J (dissolved) comes in,
        # A's stale change loses to the file; then newer events: F changed, G deleted, D after November 1.
        Events([event("C", "C LATE LIVE", "2026-09-20T10:00:00"), event("I", "I LATE LIVE", "2026-09-25T10:00:00"),
                event("J", "J LATE DISSOLVED", "2026-09-26T10:00:00", "dissolved"), event("A", "A STALE", "2026-09-28T10:00:00"),
                event("F", "F OCT EVENT", "2026-10-05T10:00:00"), event("G", None, "2026-10-06T10:00:00"),
                event("D", "D NOV EVENT", "2026-11-02T10:00:00", "liquidation")]),
        # B, H absent and live: gone; E, J absent and closed: kept; F takes the file; D's event is newer; K new.
        File(date(2026, 11, 1), {"A": ("A NOV FILE", "active"), "D": ("D NOV FILE", "dissolved"), "F": ("F NOV FILE", "active"),
                                 "K": ("K NOV FILE", "active")}),
        Events([event("A", "A NOV EVENT", "2026-11-03T10:00:00"), event("B", "B BACK", "2026-11-04T10:00:00"),
                event("H", None, "2026-11-05T10:00:00")]),
    ]
    offset, timepoint = 0, 100
    for step in steps:
        if isinstance(step, Events):
            for message in step.messages:
                message.offset, message.timepoint = offset, timepoint
                offset, timepoint = offset + 1, timepoint + 1
    return steps


NUMBERS = sorted("ABCDEFGHIJK")


@dataclass
class Truth:
    """The rules, applied one fact at a time. An order key is (instant, timepoint, partition, offset);
    a file's row is (its instant, -1, -1, -1): below any event of that second."""

    rows: dict[str, tuple[tuple, str, str]] = field(default_factory=dict)  # number -> (order, name, status)
    tombstones: dict[str, tuple] = field(default_factory=dict)  # number -> order of its newest deletion
    newest_file: datetime | None = None

    def take_file(self, file: File) -> None:
        order = (file.instant, -1, -1, -1)
        for number, (name, status) in file.companies.items():
            if self._newer(number, order):
                self.rows[number] = (order, name, status)
        for number, (held, _, status) in list(self.rows.items()):
            if number not in file.companies and status not in CLOSED and held < order:
                del self.rows[number]  # left the register (no tombstone: the file is no event)
        self.newest_file = max(filter(None, [self.newest_file, file.instant]))

    def take_events(self, messages: list[Message]) -> None:
        for message in sorted(messages, key=self._order):
            order, number = self._order(message), message.number
            if message.name is None:
                self.tombstones[number] = max(order, self.tombstones.get(number, order))
                if number in self.rows and order > self.rows[number][0]:
                    del self.rows[number]
            elif self._newer(number, order) and not self._contradicted(message):
                self.rows[number] = (order, message.name, message.status)

    def core(self) -> dict[str, tuple[str, str]]:
        return {number: (name, status) for number, (_, name, status) in self.rows.items()}

    def _newer(self, number: str, order: tuple) -> bool:
        return (number not in self.rows or order > self.rows[number][0]) and (
            number not in self.tombstones or order > self.tombstones[number]
        )

    def _contradicted(self, message: Message) -> bool:
        """A live event older than the newest file: the file lists every live company."""
        return self.newest_file is not None and message.published_at < self.newest_file and message.status not in CLOSED

    @staticmethod
    def _order(message: Message) -> tuple:
        return (min(message.published_at, message.kafka_timestamp.replace(microsecond=0)), message.timepoint,
                message.partition, message.offset)  # fmt: skip
