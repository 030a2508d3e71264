"""Kafka message -> stream row (DESIGN §5), or -> reject row with the reason.

Two message shapes are accepted (DESIGN §4): the original Companies House event envelope, and
the tutorial's flat six-field record with ``"NA"`` for missing values. Parsing never raises for
bad input: a message that is not one of the two shapes becomes a reject row carrying its
coordinates, its bytes (base64) and the error, so it can be inspected and replayed.

Decisions: every ``event.type`` other than ``changed``/``deleted`` is rejected (dbt's accepted
values); an unknown ``resource_kind`` is landed with its kind (the stream table is the faithful
record of the topic; dbt keeps ``company-profile``); a ``deleted`` event without ``data`` takes its
company number from the message key or the ``resource_uri`` (``/company/{number}``).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

import pyarrow as pa

from ch_pipeline.warehouse.schema import REJECT_COLUMNS, STREAM_COLUMNS, arrow_schema

STREAM_SCHEMA = arrow_schema(STREAM_COLUMNS)
REJECT_SCHEMA = arrow_schema(REJECT_COLUMNS)
EVENT_TYPES = frozenset({"changed", "deleted"})
FLAT_FIELDS = ("company_name", "company_number", "company_status", "date_of_creation", "postal_code", "published_at")
_COMPANY_URI = re.compile(r"/company/([A-Za-z0-9]+)")
_MISSING = "NA"  # the tutorial producer's marker for a missing value


class MessageError(ValueError):
    """This message is neither a Companies House event nor a flat tutorial record."""


@dataclass(frozen=True)
class StreamFields:
    """What a message says, typed: the parsed part of a stream row."""

    company_name: str | None
    company_number: str
    company_status: str | None
    date_of_creation: date | None
    postal_code: str | None
    published_at: datetime
    event_type: str
    timepoint: int | None
    resource_kind: str | None
    raw_event: str


def parse_message(value: bytes | None, key: bytes | None) -> StreamFields:
    """Parse one message value (its key is the fallback company number); raise ``MessageError``."""
    if value is None:
        raise MessageError("null message value (tombstone)")
    try:
        # Decode first: json.loads(bytes) would also accept UTF-16/32, which raw_event cannot hold as sent.
        text = value.decode("utf-8")
        document = json.loads(text)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
        raise MessageError(f"not UTF-8 JSON: {exc}") from None
    if not isinstance(document, dict):
        raise MessageError(f"JSON {type(document).__name__}, expected an object")
    if "event" in document or "resource_kind" in document:
        return _parse_event(document, key, text)
    if "company_number" in document and "published_at" in document:
        return _parse_flat(document, text)
    raise MessageError("neither a Companies House event (no 'event') nor a flat record (no 'company_number'/'published_at')")


def _parse_event(document: dict[str, Any], key: bytes | None, text: str) -> StreamFields:
    event = document.get("event")
    if not isinstance(event, dict):
        raise MessageError("'event' is missing or not an object")
    event_type = event.get("type")
    if event_type not in EVENT_TYPES:
        raise MessageError(f"event.type {event_type!r} is not one of {sorted(EVENT_TYPES)}")
    data = document.get("data")
    if data is None and event_type == "changed":
        raise MessageError("a 'changed' event without 'data'")
    if data is not None and not isinstance(data, dict):
        raise MessageError("'data' is not an object")
    data = data or {}
    address = data.get("registered_office_address")
    if address is not None and not isinstance(address, dict):
        raise MessageError("'data.registered_office_address' is not an object")
    number = _text(data, "company_number") or _company_from_uri(document.get("resource_uri")) or _key_text(key)
    if not number:
        raise MessageError("no company number in data, resource_uri or key")
    timepoint = event.get("timepoint")
    if timepoint is not None and (not isinstance(timepoint, int) or isinstance(timepoint, bool) or not 0 <= timepoint < 1 << 63):
        raise MessageError(f"event.timepoint {timepoint!r} is not a non-negative 64-bit integer")
    return StreamFields(
        company_name=_text(data, "company_name"),
        company_number=number,
        company_status=_text(data, "company_status"),
        date_of_creation=_date(data.get("date_of_creation")),
        postal_code=_text(address, "postal_code") if address else None,
        published_at=_timestamp(event.get("published_at")),
        event_type=event_type,
        timepoint=timepoint,
        resource_kind=_text(document, "resource_kind"),
        raw_event=text,
    )


def _parse_flat(document: dict[str, Any], text: str) -> StreamFields:
    flat = {name: None if document.get(name) == _MISSING else document.get(name) for name in FLAT_FIELDS}
    number = _text(flat, "company_number")
    if not number:
        raise MessageError("flat record without company_number")
    return StreamFields(
        company_name=_text(flat, "company_name"),
        company_number=number,
        company_status=_text(flat, "company_status"),
        date_of_creation=_date(flat["date_of_creation"]),
        postal_code=_text(flat, "postal_code"),
        published_at=_timestamp(flat["published_at"]),
        event_type="changed",
        timepoint=None,
        resource_kind=None,
        raw_event=text,
    )


def _text(document: dict[str, Any], name: str) -> str | None:
    value = document.get(name)
    if value is None or isinstance(value, str):
        return value
    raise MessageError(f"{name} {value!r} is not a string")


def _key_text(key: bytes | None) -> str | None:
    try:
        return key.decode() if key else None
    except UnicodeDecodeError:
        return None


def _company_from_uri(uri: Any) -> str | None:
    match = _COMPANY_URI.search(uri) if isinstance(uri, str) else None
    return match.group(1) if match else None


def _date(value: Any) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise MessageError(f"date_of_creation {value!r} is not an ISO date (YYYY-MM-DD)") from None


def _timestamp(value: Any) -> datetime:
    """An ISO timestamp; without an offset it is UTC (the stream's published_at has none)."""
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise MessageError(f"published_at {value!r} is not an ISO timestamp") from None
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed


class StreamBatchBuilder:
    """Accumulates messages of one stream partition into a stream table and a rejects table (Arrow)."""

    def __init__(self, stream_partition: str, ingested_at: datetime) -> None:
        self.stream_partition = stream_partition
        self.ingested_at = ingested_at
        self.bytes = 0
        self._rows: dict[str, list] = {c.name: [] for c in STREAM_COLUMNS}
        self._rejects: dict[str, list] = {c.name: [] for c in REJECT_COLUMNS}

    def add(self, messages: Iterable[Any]) -> None:
        """Add confluent-kafka ``Message``s (anything with value/key/partition/offset/timestamp)."""
        rows, rejects = self._rows, self._rejects
        for message in messages:
            value, key = message.value(), message.key()
            self.bytes += len(value or b"") + len(key or b"")
            kafka_timestamp = _kafka_timestamp(message.timestamp())
            try:
                fields = parse_message(value, key)
            except MessageError as exc:
                rejects["kafka_partition"].append(message.partition())
                rejects["kafka_offset"].append(message.offset())
                rejects["kafka_timestamp"].append(kafka_timestamp)
                rejects["kafka_key"].append(_base64(key))
                rejects["raw_value_base64"].append(_base64(value))
                rejects["error"].append(str(exc))
                continue
            rows["company_name"].append(fields.company_name)
            rows["company_number"].append(fields.company_number)
            rows["company_status"].append(fields.company_status)
            rows["date_of_creation"].append(fields.date_of_creation)
            rows["postal_code"].append(fields.postal_code)
            rows["published_at"].append(fields.published_at)
            rows["event_type"].append(fields.event_type)
            rows["timepoint"].append(fields.timepoint)
            rows["resource_kind"].append(fields.resource_kind)
            rows["kafka_partition"].append(message.partition())
            rows["kafka_offset"].append(message.offset())
            rows["kafka_timestamp"].append(kafka_timestamp)
            rows["raw_event"].append(fields.raw_event)

    def stream_table(self) -> pa.Table:
        return self._table(self._rows, STREAM_SCHEMA)

    def rejects_table(self) -> pa.Table:
        return self._table(self._rejects, REJECT_SCHEMA)

    def _table(self, columns: dict[str, list], schema: pa.Schema) -> pa.Table:
        count = len(columns["kafka_offset"])
        columns["stream_partition"] = [self.stream_partition] * count
        columns["ingested_at"] = [self.ingested_at] * count
        return pa.table({f.name: pa.array(columns[f.name], type=f.type) for f in schema}, schema=schema)


def _kafka_timestamp(timestamp: tuple[int, int]) -> datetime | None:
    kind, millis = timestamp
    if kind == 0 or millis < 0:  # TIMESTAMP_NOT_AVAILABLE
        return None
    return datetime.fromtimestamp(millis / 1000, tz=timezone.utc)


def _base64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")
