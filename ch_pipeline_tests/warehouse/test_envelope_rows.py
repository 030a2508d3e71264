"""The envelope parser of every stream but companies: keys, row fields, timestamps, and a reject for
each way a message can be bad, every message exactly once (no broker: stand-in messages)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from ch_pipeline.companies_house.stream_events import generate_stream_events
from ch_pipeline.companies_house.streams import STREAM_NAMES, field_at, item_key_of, stream
from ch_pipeline.warehouse.envelope_rows import envelope_parser
from ch_pipeline.warehouse.schema import REJECT_COLUMNS, arrow_schema, landing_columns
from ch_pipeline.warehouse.stream_rows import StreamBatchBuilder
from ch_pipeline_tests.support.kafka import FakeMessage

OTHER_STREAMS = [name for name in STREAM_NAMES if name != "companies"]
INGESTED_AT = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)


def parse(name: str, values: list[bytes | None]):
    spec = stream(name)
    builder = StreamBatchBuilder("p0:0-9", INGESTED_AT, envelope_parser(spec), arrow_schema(landing_columns(spec)))
    builder.add(FakeMessage(0, offset, value, b"key") for offset, value in enumerate(values))
    return builder.stream_table(), builder.rejects_table()


def expected_text(value) -> str | None:
    """A row field as the landing table holds it: strings as they are, other JSON compact, none -> NULL."""
    if value is None or value == []:
        return None
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize("name", OTHER_STREAMS)
def test_every_generated_event_is_a_row_keyed_and_typed_as_the_catalogue_says(name):
    spec = stream(name)
    events = generate_stream_events(name, 150, seed=7)
    rows, rejects = parse(name, [json.dumps(event).encode() for event in events])
    assert rejects.num_rows == 0 and rows.schema == arrow_schema(landing_columns(spec))
    for event, row in zip(events, rows.to_pylist(), strict=True):
        assert (row["company_number"], row["item_id"]) == item_key_of(spec, event)
        assert (row["resource_kind"], row["resource_uri"], row["resource_id"]) == (
            event["resource_kind"], event["resource_uri"], event["resource_id"])  # fmt: skip
        assert (row["event_type"], row["timepoint"]) == (event["event"]["type"], event["event"]["timepoint"])
        published = event["event"]["published_at"].removesuffix("Z")
        assert row["published_at"] == datetime.fromisoformat(published).replace(tzinfo=timezone.utc)
        for column, path in spec.row_fields:
            assert row[column] == expected_text(field_at(event.get("data") or {}, path)), column
        assert json.loads(row["raw_event"]) == event and row["stream_partition"] == "p0:0-9"


def envelope(**changes) -> dict:
    event = {
        "resource_kind": "company-officers",
        "resource_uri": "/company/01234567/appointments/abc",
        "resource_id": "abc",
        "data": {"name": "DOE, Jane", "officer_role": "director", "appointed_on": "2020-01-02"},
        "event": {"timepoint": 5, "published_at": "2026-01-05T09:00:07", "type": "changed"},
    }
    for path, value in changes.items():
        target, *rest = path.split("__")
        if rest:
            event[target] = {**event[target], rest[0]: value}
        else:
            event[target] = value
    return event


BAD = {
    b"{not json": "not JSON",
    b"[1, 2]": "JSON array, expected an object",
    b"\xff\xfe{}": "not UTF-8 text",
    None: "null message value (tombstone)",
    json.dumps({k: v for k, v in envelope().items() if k != "event"}).encode(): "'event' is missing or not an object",
    json.dumps(envelope(event__type="updated")).encode(): "event.type updated is not changed or deleted",
    json.dumps(envelope(data=[1])).encode(): "'data' is not an object",
    json.dumps({k: v for k, v in envelope().items() if k != "data"}).encode(): "a 'changed' event without 'data'",
    json.dumps(envelope(resource_uri=7)).encode(): "resource_kind, resource_uri or resource_id is not a string",
    json.dumps(envelope(resource_uri="/officers-nowhere/abc")).encode(): "no company number in resource_uri (/company/<number>/...)",
    json.dumps(envelope(resource_uri=None, resource_id=None)).encode(): "no item id: neither resource_uri nor resource_id",
    json.dumps(envelope(event__timepoint=-3)).encode(): "event.timepoint -3 is not a non-negative 64-bit integer",
    json.dumps(envelope(event__timepoint="12")).encode(): "event.timepoint 12 is not a non-negative 64-bit integer",
    json.dumps(envelope(event__published_at="yesterday")).encode(): "event.published_at yesterday is not an ISO timestamp",
    json.dumps(envelope(event__published_at=None)).encode(): "event.published_at missing is not an ISO timestamp",
}  # fmt: skip


def test_each_bad_message_is_one_reject_with_its_reason_and_the_good_ones_land():
    good = [
        envelope(),
        envelope(event__published_at="2026-01-05T09:00:07.123456Z", event__timepoint=6),
        {**{k: v for k, v in envelope(event__type="deleted", event__timepoint=7).items() if k != "data"}},
        envelope(resource_uri="company/01234567/appointments/def", resource_id="def", event__timepoint=8),
    ]
    values = [json.dumps(event).encode() for event in good] + list(BAD)
    rows, rejects = parse("officers", values)
    assert rows.column("kafka_offset").to_pylist() == [0, 1, 2, 3]
    assert rejects.column("kafka_offset").to_pylist() == list(range(4, len(values)))
    assert rejects.column("error").to_pylist() == list(BAD.values())
    assert rejects.schema == arrow_schema(REJECT_COLUMNS)
    landed = rows.to_pylist()
    assert landed[1]["published_at"] == datetime(2026, 1, 5, 9, 0, 7, 123456, tzinfo=timezone.utc)
    assert landed[2]["event_type"] == "deleted" and landed[2]["name"] is None and landed[2]["item_id"] == "abc"
    assert (landed[3]["company_number"], landed[3]["item_id"]) == ("01234567", "def")  # no leading slash


def test_keys_of_streams_not_under_a_company_and_of_one_item_per_company():
    disqualified = {
        "resource_kind": "disqualified-officer-corporate", "resource_uri": "/disqualified-officers/corporate/XyZ",
        "resource_id": "XyZ", "data": {"name": "ACME LTD", "disqualifications": [{"disqualified_from": "2024-01-01"}]},
        "event": {"timepoint": 1, "published_at": "2026-01-05T09:00:00", "type": "changed"},
    }  # fmt: skip
    rows, rejects = parse("disqualified-officers", [json.dumps(disqualified).encode()])
    (row,) = rows.to_pylist()
    assert rejects.num_rows == 0 and (row["company_number"], row["item_id"]) == (None, "XyZ")
    assert (row["name"], row["disqualified_from"], row["forename"]) == ("ACME LTD", "2024-01-01", None)

    insolvency = {
        "resource_kind": "company-insolvency", "resource_uri": "/company/SC000001/insolvency", "resource_id": "SC000001",
        "data": {"cases": [{"type": "compulsory-liquidation", "dates": [{"type": "wound-up-on", "date": "2024-01-01"}]}]},
        "event": {"timepoint": 1, "published_at": "2026-01-05T09:00:00", "type": "changed"},
    }  # fmt: skip
    rows, _ = parse("insolvency-cases", [json.dumps(insolvency).encode()])
    (row,) = rows.to_pylist()
    assert (row["company_number"], row["item_id"], row["status"]) == ("SC000001", "SC000001", None)
    assert row["case_types"] == '["compulsory-liquidation"]'
    assert json.loads(row["case_dates"]) == [[{"type": "wound-up-on", "date": "2024-01-01"}]]
