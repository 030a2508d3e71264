"""Kafka message -> stream row or reject: both accepted shapes, typed values, clear errors."""

from __future__ import annotations

import base64
import json
from datetime import date, datetime, timezone

import pyarrow as pa
import pytest

from ch_pipeline.warehouse.schema import REJECT_COLUMNS, STREAM_COLUMNS, arrow_schema
from ch_pipeline.warehouse.stream_rows import RAW_SCHEMA, StreamBatchBuilder, raw_messages_table
from ch_pipeline_tests.support.kafka import FakeMessage
from ch_pipeline_tests.warehouse.messages import MALFORMED_VALUES, company_event, flat_record

INGESTED = datetime(2024, 6, 1, tzinfo=timezone.utc)


class Row:
    """A parsed stream row's fields as attributes."""

    def __init__(self, row: dict) -> None:
        self.__dict__.update(row)


def parse(value: bytes | None, key: bytes | None = None) -> Row:
    """Parse one message through the real batch parser; fail the test if it was rejected."""
    builder = StreamBatchBuilder("p0:0-0", INGESTED)
    builder.add([FakeMessage(0, 0, value, key)])
    rejects = builder.rejects_table().to_pylist()
    assert not rejects, rejects
    (row,) = builder.stream_table().to_pylist()
    return Row(row)


def reject_reason(value: bytes | None, key: bytes | None = None) -> str:
    builder = StreamBatchBuilder("p0:0-0", INGESTED)
    builder.add([FakeMessage(0, 0, value, key)])
    assert builder.stream_table().num_rows == 0
    (reject,) = builder.rejects_table().to_pylist()
    return reject["error"]


def test_companies_house_event_is_typed():
    fields = parse(json.dumps(company_event(3)).encode(), b"00000003")
    assert fields.company_number == "00000003"
    assert fields.company_name == "EXAMPLE 3 LIMITED"
    assert fields.company_status == "active"
    assert fields.date_of_creation == date(1993, 4, 4)
    assert fields.postal_code == "AB3 3CD"
    assert fields.published_at == datetime(2024, 5, 1, 9, 0, 3, tzinfo=timezone.utc)
    assert (fields.event_type, fields.timepoint, fields.resource_kind) == ("changed", 1003, "company-profile")


def test_published_at_with_an_offset_becomes_utc():
    event = company_event(1)
    event["event"]["published_at"] = "2024-05-01T10:00:00.250+01:00"
    assert parse(json.dumps(event).encode()).published_at == datetime(2024, 5, 1, 9, 0, 0, 250000, tzinfo=timezone.utc)


def test_deleted_event_without_data_takes_the_number_from_the_uri_or_key():
    event = company_event(8, "deleted")
    fields = parse(json.dumps(event).encode())
    assert (fields.event_type, fields.company_number, fields.company_name) == ("deleted", "00000008", None)
    del event["resource_uri"]
    assert parse(json.dumps(event).encode(), b"KEY123").company_number == "KEY123"


def test_unknown_resource_kind_is_landed_with_its_kind():
    event = company_event(2)
    event["resource_kind"] = "company-officers"
    assert parse(json.dumps(event).encode()).resource_kind == "company-officers"


def test_flat_tutorial_record_maps_na_to_null():
    fields = parse(json.dumps(flat_record(1)).encode())
    assert fields.company_name == "FLAT 1 LTD"
    assert fields.date_of_creation is None and fields.postal_code is None
    assert (fields.event_type, fields.timepoint, fields.resource_kind) == ("changed", None, None)
    assert parse(json.dumps(flat_record(6)).encode()).date_of_creation == date(2001, 2, 3)


@pytest.mark.parametrize(
    "value, reason",
    [
        (None, "tombstone"),
        (b"not json at all", "not JSON"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"[1, 2, 3]", "JSON array, expected an object"),
        ('{"a": 1}'.encode("utf-16"), "not UTF-8"),
        (b'{"event": {"type": "changed", "published_at": "2024-01-01T00:00:00"}}', "without 'data'"),
        (b'{"event": {"type": "exploded", "published_at": "2024-01-01T00:00:00"}, "data": {}}', "exploded is not changed or deleted"),
        (b'{"event": {"type": "changed", "published_at": "yesterday"}, "data": {"company_number": "1"}}', "yesterday is not an ISO timestamp"),
        (b'{"event": {"type": "changed", "published_at": "infinity"}, "data": {"company_number": "1"}}', "is not an ISO timestamp"),
        (b'{"event": {"type": "changed"}, "data": {"company_number": "1"}}', "missing is not an ISO timestamp"),
        (b'{"event": {"type": "changed", "published_at": "2024-01-01T00:00:00"}, "data": {"company_number": "1", "date_of_creation": "31/12/2020"}}', "31/12/2020 is not an ISO date"),
        (b'{"event": {"type": "changed", "published_at": "2024-01-01T00:00:00"}, "data": {"company_number": "1", "date_of_creation": "2021-02-30"}}', "is not an ISO date"),
        (b'{"event": {"type": "changed", "published_at": "2024-01-01T00:00:00", "timepoint": "7"}, "data": {"company_number": "1"}}', "timepoint"),
        (b'{"event": {"type": "changed", "published_at": "2024-01-01T00:00:00", "timepoint": -1}, "data": {"company_number": "1"}}', "timepoint -1"),
        (b'{"event": {"type": "changed", "published_at": "2024-01-01T00:00:00"}, "data": {"company_number": 12}}', "is not a string"),
        (b'{"event": {"type": "changed", "published_at": "2024-01-01T00:00:00"}, "data": {"company_name": "X"}}', "no company number"),
        (b'{"event": {"type": "changed", "published_at": "2024-01-01T00:00:00"}, "data": []}', "'data' is not an object"),
        (b'{"event": "changed"}', "'event' is missing or not an object"),
        (b'{"company_name": "X", "company_number": "NA", "published_at": "2024-01-01T00:00:00"}', "flat record without company_number"),
        (b'{"company_name": "X", "company_number": "1", "published_at": "NA"}', "published_at missing"),
        (b'{"company_name": 5, "company_number": "1", "published_at": "2024-01-01T00:00:00"}', "flat record field is not a string"),
        (b'{"hello": "world"}', "neither a Companies House event"),
    ],
)
def test_malformed_messages_are_rejected_with_the_reason(value, reason):
    assert reason in reject_reason(value)


def test_every_malformed_fixture_is_rejected():
    for value in MALFORMED_VALUES:
        assert reject_reason(value)


def test_builder_makes_arrow_tables_in_the_schema_of_record():
    ingested = INGESTED
    builder = StreamBatchBuilder("p0:0-2", ingested)
    good = json.dumps(company_event(1)).encode()
    builder.add([FakeMessage(0, 0, good, b"k"), FakeMessage(0, 1, b"oops", b"\x00\x01"), FakeMessage(0, 2, None, None, (0, -1))])
    rows, rejects = builder.stream_table(), builder.rejects_table()
    assert rows.schema == arrow_schema(STREAM_COLUMNS) and rejects.schema == arrow_schema(REJECT_COLUMNS)
    assert rows.num_rows == 1 and rejects.num_rows == 2
    row = rows.to_pylist()[0]
    assert row["raw_event"] == good.decode() and row["stream_partition"] == "p0:0-2" and row["ingested_at"] == ingested
    assert row["kafka_timestamp"] == datetime(2024, 5, 1, 9, 0, tzinfo=timezone.utc)
    first, second = rejects.to_pylist()
    assert base64.b64decode(first["raw_value_base64"]) == b"oops" and base64.b64decode(first["kafka_key"]) == b"\x00\x01"
    assert "not JSON" in first["error"]
    assert second["raw_value_base64"] is None and second["kafka_timestamp"] is None and "tombstone" in second["error"]
    assert builder.bytes == len(good) + 1 + 4 + 2
    assert rows.column("date_of_creation").type == pa.date32()


def test_raw_messages_table_keeps_every_value_key_and_timestamp_exactly():
    messages = [
        FakeMessage(1, 7, b"", b"", (1, 0)),  # empty value and key are not null
        FakeMessage(1, 8, None, None, (0, 1714554000000)),  # no timestamp available
        FakeMessage(1, 9, "é{}".encode(), b"\xff", (2, -1)),  # a negative time is no time
        FakeMessage(1, 10, b"\x00" * 70_000, b"k" * 300, (1, 1714554000123)),
    ]
    table = raw_messages_table(messages)
    assert table.schema == RAW_SCHEMA
    assert table.column("value").to_pylist() == [b"", None, "é{}".encode(), b"\x00" * 70_000]
    assert table.column("kafka_key").to_pylist() == [b"", None, b"\xff", b"k" * 300]
    assert table.column("kafka_offset").to_pylist() == [7, 8, 9, 10] and table.column("kafka_partition").to_pylist() == [1] * 4
    assert table.column("kafka_timestamp").to_pylist() == [
        datetime(1970, 1, 1, tzinfo=timezone.utc), None, None, datetime(2024, 5, 1, 9, 0, 0, 123000, tzinfo=timezone.utc)
    ]
    # A chunk without a null (the common case) takes its own path.
    without_nulls = raw_messages_table([messages[0], messages[2], messages[3]])
    assert without_nulls.column("value").to_pylist() == [b"", "é{}".encode(), b"\x00" * 70_000]
    assert without_nulls.column("kafka_key").to_pylist() == [b"", b"\xff", b"k" * 300]
    assert without_nulls.column("value").null_count == without_nulls.column("kafka_key").null_count == 0


def test_many_chunks_land_every_message_once_in_order():
    """More chunks than may wait for the parser; chunks all good, all rejected and mixed."""
    builder = StreamBatchBuilder("p0:0-59", INGESTED)
    offsets = iter(range(60))
    chunks = [
        [json.dumps(company_event(i)).encode() for i in range(10)],
        [b"not json"] * 10,
        [json.dumps(company_event(i)).encode() if i % 2 else b"[]" for i in range(10)],
    ] * 2
    for chunk in chunks:
        builder.add([FakeMessage(0, next(offsets), value) for value in chunk])
    rows, rejects = builder.stream_table(), builder.rejects_table()
    values = [value for chunk in chunks for value in chunk]
    good = [offset for offset, value in enumerate(values) if value.startswith(b"{")]
    assert rows.column("kafka_offset").to_pylist() == good
    assert rows.column("raw_event").to_pylist() == [values[offset].decode() for offset in good]
    assert sorted(rejects.column("kafka_offset").to_pylist()) == sorted(set(range(60)) - set(good))
    assert [base64.b64decode(r["raw_value_base64"]) for r in rejects.to_pylist()] == [
        values[r["kafka_offset"]] for r in rejects.to_pylist()
    ]
