"""Companies House company-profile stream events: the envelope, a realistic generator, ground truth.

The small public API (used by the replay server, the producer and the tests of every later stage):

- ``generate_events(n, seed=0, first_timepoint=1)`` -> ``list[dict]``: ``n`` distinct events with
  consecutive integer timepoints, in stream order, plus the occasional duplicate (the same event
  sent again, same timepoint, right after the original), so ``len(result) >= n``. Deterministic for
  a seed. Each item is a full envelope (docs/architecture.md §3); ``deleted`` events have no ``data``.
- ``event_bytes(event)`` -> the exact bytes of the event's line as the replay server sends it
  (without the newline); the producer puts these bytes, unmodified, into Kafka.
- ``write_events(path, events)`` / ``read_events(path)``: the events as an NDJSON file.
- ``company_number_of(event)``: the Kafka key: ``data.company_number``, else parsed from
  ``resource_uri`` (``deleted`` events have no ``data``).
- ``final_companies(events, received_at=None)`` -> ``{company_number: row}``: the ground truth of the
  core table after all events (the latest event wins, ``deleted`` removes the company); a row has the
  tutorial's fields (``company_name, company_number, company_status, date_of_creation, postal_code,
  published_at``), ``None`` for a missing value. Events are ordered as the dbt models order them
  (``ch_dbt/macros/event_order.sql``): by ``published_at``, but never later than the second the event
  reached Kafka (``received_at(event)``, its Kafka timestamp, when given), then by ``timepoint``;
  equal events keep their order in ``events`` (Kafka order).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

RESOURCE_KIND = "company-profile"

# Real prefixes and rough shares (England & Wales have none: eight digits, often leading zeros).
_NUMBER_PREFIXES = {"": 70, "SC": 8, "NI": 4, "OC": 6, "SO": 2, "FC": 3, "LP": 3, "SL": 1, "NC": 1, "R0": 1}
_STATUSES = [
    "active", "active", "active", "active", "dissolved", "liquidation", "administration",
    "receivership", "voluntary-arrangement", "converted-closed", "insolvency-proceedings",
]  # fmt: skip
_COMPANY_TYPES = {"": "ltd", "SC": "ltd", "NI": "ltd", "OC": "llp", "SO": "llp", "FC": "oversea-company",
                  "LP": "limited-partnership", "SL": "limited-partnership", "NC": "llp", "R0": "ltd"}  # fmt: skip
_JURISDICTIONS = {"SC": "scotland", "SO": "scotland", "SL": "scotland", "NI": "northern-ireland", "R0": "northern-ireland"}
_NAME_WORDS = [
    "ACME", "NORTHERN", "HIGHLAND", "THAMES", "BRIDGE", "OAK", "CASTLE", "GREEN", "PHOENIX", "ATLAS",
    "CAFÉ", "ZÜRICH", "ŁÓDŹ", "SMØRREBRØD", "NAÏVE", "CRÈME", "O'BRIEN", "\"THE\" CORNER", "D'ARCY",
    "SMITH & SONS", "100%", "WELSH CYMRU", "BLÅBÆR", "MÜLLER", "ANDERSON", "KINGS", "QUAY", "DIGITAL",
]  # fmt: skip
_NAME_SUFFIXES = {"ltd": ["LTD", "LIMITED", "LTD.", "CYFYNGEDIG"], "llp": ["LLP"], "oversea-company": ["GMBH", "S.A.", "INC."],
                  "limited-partnership": ["LP", "L.P."]}  # fmt: skip
_POSTCODE_AREAS = ["EC1A", "SW1A", "M1", "B33", "CR2", "DN55", "EH1", "G2", "BT1", "CF10", "LS1", "W1A", "AB10"]
_TOWNS = ["London", "Manchester", "Birmingham", "Edinburgh", "Glasgow", "Belfast", "Cardiff", "Leeds", "Aberdeen"]
_FIRST_PUBLISHED_AT = datetime(2026, 1, 5, 9, 0, 0)
_DUPLICATE_RATE = 0.03
_DELETE_RATE = 0.04
_REPEAT_RATE = 0.35


def generate_events(n: int, seed: int = 0, first_timepoint: int = 1) -> list[dict]:
    """``n`` distinct realistic events (timepoints ``first_timepoint ..``) plus a few duplicates."""
    generator = _EventGenerator(random.Random(seed))
    events: list[dict] = []
    for index in range(n):
        event = generator.next_event(first_timepoint + index)
        events.append(event)
        if generator.rng.random() < _DUPLICATE_RATE:
            # The API can send an event twice: same bytes, same timepoint.
            events.append(json.loads(event_bytes(event)))
    return events


def event_bytes(event: dict) -> bytes:
    """The event's line exactly as served (UTF-8 JSON, non-ASCII kept, no newline)."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def write_events(path: str | Path, events: Iterable[dict]) -> Path:
    path = Path(path)
    with path.open("wb") as out:
        for event in events:
            out.write(event_bytes(event) + b"\n")
    return path


def read_events(path: str | Path) -> list[dict]:
    with Path(path).open("rb") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def timepoint_of(event: dict) -> int:
    return int(event["event"]["timepoint"])


def company_number_of(event: dict) -> str | None:
    """The company number: from ``data`` when present, else the last segment of ``resource_uri``."""
    number = (event.get("data") or {}).get("company_number")
    if number:
        return str(number)
    uri = event.get("resource_uri") or ""
    if uri.startswith("/company/"):
        return uri.removeprefix("/company/").split("/", 1)[0] or None
    return event.get("resource_id") or None


def final_companies(
    events: Iterable[dict], received_at: Callable[[dict], datetime | None] | None = None
) -> dict[str, dict]:
    """The expected core table after ``events``: one row per company not deleted. ``received_at``
    gives an event's Kafka timestamp (``None``: unknown); without it ``published_at`` is taken as is
    (the generator never publishes after sending)."""
    latest: dict[str, tuple[tuple[datetime, int], dict]] = {}
    for event in events:
        number = company_number_of(event)
        order = event_order(event, received_at(event) if received_at else None)
        current = latest.get(number)
        if current is None or order >= current[0]:
            latest[number] = (order, event)
    return {number: company_row(event) for number, (_, event) in latest.items() if event["event"]["type"] != "deleted"}


def company_row(event: dict) -> dict:
    """The tutorial's six fields of one ``changed`` event; ``None`` where the event has no value."""
    data = event.get("data") or {}
    return {
        "company_name": data.get("company_name"),
        "company_number": company_number_of(event),
        "company_status": data.get("company_status"),
        "date_of_creation": data.get("date_of_creation"),
        "postal_code": (data.get("registered_office_address") or {}).get("postal_code"),
        "published_at": event["event"]["published_at"],
    }


_EARLIEST = datetime.min.replace(tzinfo=timezone.utc)


def event_order(event: dict, received_at: datetime | None = None) -> tuple[datetime, int]:
    """(order time, timepoint), larger is newer. The order time is ``published_at`` (UTC when it has no
    offset; missing: the earliest instant), but no later than ``received_at`` truncated to the second:
    an event published "in the future" counts as published when it reached Kafka, so it cannot hold
    back the company's later events (the rule of ``ch_dbt/macros/event_order.sql``)."""
    text = event["event"].get("published_at")
    published = _EARLIEST if not text else datetime.fromisoformat(text)
    if published.tzinfo is None:
        published = published.replace(tzinfo=timezone.utc)
    if received_at is not None:
        if received_at.tzinfo is None:
            received_at = received_at.replace(tzinfo=timezone.utc)
        published = min(published, received_at.replace(microsecond=0))
    return published, timepoint_of(event)


@dataclass
class _EventGenerator:
    rng: random.Random
    companies: dict[str, dict] = field(default_factory=dict)
    live_numbers: list[str] = field(default_factory=list)  # for an O(1), seed-stable random pick
    used_numbers: set[str] = field(default_factory=set)
    published_at: datetime = _FIRST_PUBLISHED_AT

    def next_event(self, timepoint: int) -> dict:
        # Several events can share a second, as in the real stream.
        self.published_at += timedelta(seconds=self.rng.choice([0, 0, 1, 1, 2, 7]))
        roll = self.rng.random()
        if self.live_numbers and roll < _DELETE_RATE:
            index = self.rng.randrange(len(self.live_numbers))
            self.live_numbers[index], self.live_numbers[-1] = self.live_numbers[-1], self.live_numbers[index]
            number = self.live_numbers.pop()
            del self.companies[number]
            return self._envelope(number, None, "deleted", timepoint, [])
        if self.live_numbers and roll < _DELETE_RATE + _REPEAT_RATE:
            number = self.rng.choice(self.live_numbers)
            data, changed = self._update(self.companies[number])
        else:
            number = self._new_number()
            data, changed = self._new_company(number), []
            self.live_numbers.append(number)
        self.companies[number] = data
        return self._envelope(number, data, "changed", timepoint, changed)

    def _envelope(self, number: str, data: dict | None, kind: str, timepoint: int, changed: list[str]) -> dict:
        envelope: dict = {"resource_kind": RESOURCE_KIND, "resource_uri": f"/company/{number}", "resource_id": number}
        if data is not None:
            envelope["data"] = data
        event: dict = {"timepoint": timepoint, "published_at": self.published_at.strftime("%Y-%m-%dT%H:%M:%S"), "type": kind}
        if changed:
            event["fields_changed"] = changed
        envelope["event"] = event
        return envelope

    def _new_number(self) -> str:
        while True:
            prefix = self.rng.choices(list(_NUMBER_PREFIXES), weights=list(_NUMBER_PREFIXES.values()))[0]
            digits = 8 - len(prefix)
            # Leading zeros are common: older companies have small numbers.
            value = self.rng.choice([self.rng.randrange(10 ** (digits - 2)), self.rng.randrange(10**digits)])
            number = f"{prefix}{value:0{digits}d}"
            if number not in self.used_numbers:
                self.used_numbers.add(number)
                return number

    def _new_company(self, number: str) -> dict:
        prefix = next((p for p in _NUMBER_PREFIXES if p and number.startswith(p)), "")
        company_type = _COMPANY_TYPES[prefix]
        created = date(1960, 1, 1) + timedelta(days=self.rng.randrange(66 * 365))
        data = {
            "can_file": True,
            "company_name": self._name(company_type),
            "company_number": number,
            "company_status": self.rng.choice(_STATUSES),
            "date_of_creation": created.isoformat(),
            "etag": "%040x" % self.rng.getrandbits(160),
            "jurisdiction": _JURISDICTIONS.get(prefix, "england-wales"),
            "links": {"self": f"/company/{number}"},
            "sic_codes": [f"{self.rng.randrange(1110, 99000):05d}"],
            "type": company_type,
        }
        address = self._address()
        if address is not None:
            data["registered_office_address"] = address
        return data

    def _update(self, previous: dict) -> tuple[dict, list[str]]:
        data = json.loads(json.dumps(previous))
        field_name = self.rng.choice(["company_status", "company_name", "registered_office_address", "etag"])
        if field_name == "company_status":
            data["company_status"] = self.rng.choice(_STATUSES)
        elif field_name == "company_name":
            data["company_name"] = self._name(data["type"])
        elif field_name == "registered_office_address":
            address = self._address()
            if address is None:
                data.pop("registered_office_address", None)
            else:
                data["registered_office_address"] = address
        data["etag"] = "%040x" % self.rng.getrandbits(160)
        return data, [field_name] if field_name != "etag" else []

    def _name(self, company_type: str) -> str:
        words = self.rng.sample(_NAME_WORDS, self.rng.choice([1, 2, 2, 3]))
        return " ".join([*words, self.rng.choice(_NAME_SUFFIXES[company_type])])

    def _address(self) -> dict | None:
        roll = self.rng.random()
        if roll < 0.05:
            return None  # no registered office address at all
        address = {
            "address_line_1": f"{self.rng.randrange(1, 300)} {self.rng.choice(['High Street', 'Station Road', 'Church Lane'])}",
            "locality": self.rng.choice(_TOWNS),
            "country": "United Kingdom",
        }
        if roll > 0.1:  # otherwise an address without a postcode
            address["postal_code"] = (
                f"{self.rng.choice(_POSTCODE_AREAS)} {self.rng.randrange(10)}"
                f"{self.rng.choice('ABDEFGHJLNPQRSTUWXYZ')}{self.rng.choice('ABDEFGHJLNPQRSTUWXYZ')}"
            )
        return address
