"""The bad-input corpus (issue 9): every case, its input and the outcome a user meets, in one table.

Three layers, each where the outcome shows:

- ``STREAM_CASES``: HTTP bodies as the Companies House stream client reads them (status, the exact
  chunks, how the connection ends); the outcome is the list of event lines the client yields.
- ``LANDING_CASES``: Kafka messages (key, value bytes, partition) landed by a real Dagster run of
  ``company_house_stream``; the outcome is a stream row with these values (``None`` = NULL) or a
  reject row whose error names the reason.
- ``DBT_CASES``: events for one company over two landing batches; the outcome is its row in
  ``company_house_core`` after the real dbt build.

A case whose expected outcome the code does not meet yet carries ``bug``: its test is a strict
xfail naming the bug, so fixing the bug turns it into a pass that must be kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timezone

from ch_pipeline.companies_house.events import company_number_of, event_bytes

PUBLISHED_AT = "2026-11-02T10:00:00"


# --- Building blocks -------------------------------------------------------------------------


def company_data(number: str, **fields) -> dict:
    """A company-profile ``data`` object as the API sends it; ``fields`` override or add (None removes)."""
    data = {
        "company_name": f"CORPUS {number} LIMITED",
        "company_number": number,
        "company_status": "active",
        "date_of_creation": "2015-06-01",
        "registered_office_address": {"address_line_1": "1 High Street", "locality": "London", "postal_code": "EC1A 1BB"},
        "type": "ltd",
        "etag": "e" * 40,
    }
    data.update(fields)
    return {name: value for name, value in data.items() if value is not None}


def envelope(
    number: str,
    data: dict | None = None,
    event_type: str = "changed",
    published_at: str = PUBLISHED_AT,
    timepoint: int = 1000,
    resource_kind: str = "company-profile",
) -> dict:
    """The stream's event envelope (docs/architecture.md §3); ``data`` is left out when None (a ``deleted`` event)."""
    event: dict = {
        "resource_kind": resource_kind,
        "resource_uri": f"/company/{number}",
        "resource_id": number,
        "event": {"timepoint": timepoint, "published_at": published_at, "type": event_type},
    }
    if data is not None:
        event["data"] = data
    return event


def without(event: dict, *names: str) -> dict:
    return {name: value for name, value in event.items() if name not in names}


def changed(number: str, timepoint: int = 1000, published_at: str = PUBLISHED_AT, **fields) -> bytes:
    return event_bytes(envelope(number, company_data(number, **fields), timepoint=timepoint, published_at=published_at))


def flat(**fields: str) -> bytes:
    """The tutorial producer's flat six-field record, "NA" for missing (docs/architecture.md §4)."""
    record = {
        "company_name": "FLAT RECORD LTD",
        "company_number": "07000001",
        "company_status": "active",
        "date_of_creation": "2010-03-04",
        "postal_code": "M1 1AE",
        "published_at": PUBLISHED_AT,
    }
    record.update(fields)
    return json.dumps(record).encode()


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


# --- Stream client cases ---------------------------------------------------------------------

LINE_A = changed("00000101", timepoint=101, company_name="CAFÉ ZÜRICH LTD")
LINE_B = changed("SC000102", timepoint=102)
HTML_503 = (
    b"<html><head><title>503 Service Temporarily Unavailable</title></head>"
    b"<body><h1>503 Service Temporarily Unavailable</h1><hr><center>nginx</center></body></html>\n"
)


@dataclass(frozen=True)
class Response:
    """One HTTP response of the scripted server: the exact chunks, then a clean end or a cut connection."""

    chunks: tuple[bytes, ...]
    status: int = 200
    content_type: str = "application/json"
    dropped: bool = False  # cut the TCP connection without ending the chunked body
    pause: float = 0.0  # seconds between chunks


@dataclass(frozen=True)
class StreamCase:
    name: str
    responses: tuple[Response, ...]
    expected_lines: tuple[bytes, ...]  # the event lines the client yields, in order
    expected_requests: tuple[str, ...]  # the query of each request ("" = no timepoint)
    expected_warning: str | None = None  # what the client tells the user (None: no warning at all)
    read_timeout: float = 5.0


def _bytewise(data: bytes, size: int) -> tuple[bytes, ...]:
    return tuple(data[i : i + size] for i in range(0, len(data), size))


_E_ACUTE = LINE_A.index("É".encode())
STREAM_CASES = [
    StreamCase(
        # 1.5 s of heartbeats only, three times the read timeout: blank lines keep the connection
        # alive (each resets the timeout) and are never events.
        "heartbeat_only_stream",
        (Response((b"\n",) * 30 + (LINE_A + b"\n",), pause=0.05),),
        expected_lines=(LINE_A,),
        expected_requests=("",),
        read_timeout=0.5,
    ),
    StreamCase(
        # One line in 7-byte chunks, another cut inside the two bytes of "É", a third sharing a chunk.
        "json_split_across_chunks",
        (Response(
            (LINE_A[: _E_ACUTE + 1], LINE_A[_E_ACUTE + 1 :] + b"\n" + LINE_B[:5])
            + _bytewise(LINE_B[5:] + b"\n", 7)
        ),),  # fmt: skip
        expected_lines=(LINE_A, LINE_B),
        expected_requests=("",),
    ),
    StreamCase(
        # The connection dies mid-line: the half line is not an event; the client resumes after A.
        "truncated_last_line",
        (Response((LINE_A + b"\n", LINE_B[: len(LINE_B) // 2]), dropped=True), Response((LINE_B + b"\n",))),
        expected_lines=(LINE_A, LINE_B),
        expected_requests=("", "timepoint=101"),
        expected_warning="connection lost after timepoint 101",
    ),
    StreamCase(
        # The body ends cleanly after half a line: the half is discarded, never taken as an event.
        "truncated_last_line_at_a_clean_end_of_body",
        (Response((LINE_A + b"\n", LINE_B[: len(LINE_B) // 2])), Response((LINE_B + b"\n",))),
        expected_lines=(LINE_A, LINE_B),
        expected_requests=("", "timepoint=101"),
        expected_warning="discarded a truncated line",
    ),
    StreamCase(
        # A proxy's HTML error page: quoted in the log, never an event; the client backs off and retries.
        "html_503_body",
        (Response((HTML_503,), status=503, content_type="text/html"), Response((LINE_A + b"\n",))),
        expected_lines=(LINE_A,),
        expected_requests=("", ""),
        expected_warning="HTTP 503 from",
    ),
]


# --- Landing cases ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """Lands as a stream row; ``columns`` are the values expected in it (None = NULL)."""

    columns: dict


@dataclass(frozen=True)
class Reject:
    """Lands as a reject row whose error contains ``reason``."""

    reason: str


KEY_FROM_VALUE = "the company number in the value, as the producer keys messages"


@dataclass(frozen=True)
class LandingCase:
    name: str
    value: bytes | None
    expect: Row | Reject
    key: bytes | None | str = KEY_FROM_VALUE
    partition: int = 0
    bug: str | None = None  # set when the code does not meet ``expect`` yet (strict xfail)

    @property
    def message_key(self) -> bytes | None:
        if self.key != KEY_FROM_VALUE:
            return self.key  # type: ignore[return-value]
        try:
            document = json.loads(self.value or b"")
        except ValueError:
            return None
        if not isinstance(document, dict):
            return None
        number = company_number_of(document) or document.get("company_number")  # an event, else a flat record
        return str(number).encode() if number is not None else None


ONE_MB = 1_000_000
NEW_KAFKA_PARTITION = 2  # the topic has 3 partitions; the sensor cursor knows only 0 and 1
_EVENT_ROW = {"published_at": utc(PUBLISHED_AT), "event_type": "changed", "timepoint": 1000, "resource_kind": "company-profile"}
_QUOTED_NAME = 'CAFÉ "THE" CORNER O\'BRIEN & SØNS ŁÓDŹ 100% \\ LTD'
_BIG_NAME = "MEGA " * ((ONE_MB - 600) // 5)


def _one_mb_event() -> bytes:
    value = changed("09000016", company_name=_BIG_NAME)
    padded = value + b" " * (ONE_MB - len(value))  # JSON allows trailing whitespace: exactly 1 MB
    assert len(padded) == ONE_MB
    return padded


LANDING_CASES = [
    LandingCase(
        "iso_event_all_fields",
        changed("01234567"),
        Row({"company_name": "CORPUS 01234567 LIMITED", "company_number": "01234567", "company_status": "active",
             "date_of_creation": date(2015, 6, 1), "postal_code": "EC1A 1BB", **_EVENT_ROW}),
    ),  # fmt: skip
    LandingCase(
        # No key either: the number comes from resource_uri alone.
        "deleted_event_without_data",
        event_bytes(envelope("SC100002", event_type="deleted")),
        Row({"company_number": "SC100002", "event_type": "deleted", "company_name": None, "company_status": None,
             "date_of_creation": None, "postal_code": None}),
        key=None,
    ),  # fmt: skip
    LandingCase(
        # No data and no resource_uri: the Kafka key still names the company.
        "deleted_event_numbered_only_by_key",
        event_bytes(without(envelope("NI100003", event_type="deleted"), "resource_uri", "resource_id")),
        Row({"company_number": "NI100003", "event_type": "deleted"}),
        key=b"NI100003",
    ),
    LandingCase(
        "deleted_event_with_no_company_number_anywhere",
        event_bytes(without(envelope("NI100004", event_type="deleted"), "resource_uri", "resource_id")),
        Reject("no company number in data, resource_uri or key"),
        key=None,
    ),
    LandingCase(
        "missing_registered_office_address",
        changed("01000005", registered_office_address=None),
        Row({"company_number": "01000005", "postal_code": None, "company_name": "CORPUS 01000005 LIMITED",
             "date_of_creation": date(2015, 6, 1)}),
    ),  # fmt: skip
    LandingCase(
        "empty_string_postcode",
        changed("01000006", registered_office_address={"address_line_1": "1 Quay", "postal_code": ""}),
        Row({"company_number": "01000006", "postal_code": None}),
    ),
    LandingCase(
        # The stream table is the faithful record of the topic; dbt keeps only company-profile.
        "unknown_resource_kind",
        event_bytes(envelope("01000007", company_data("01000007"), resource_kind="company-officers")),
        Row({"company_number": "01000007", "resource_kind": "company-officers"}),
    ),
    LandingCase(
        "unknown_event_type",
        event_bytes(envelope("01000008", company_data("01000008"), event_type="exploded")),
        Reject("event.type exploded is not changed or deleted"),
    ),
    LandingCase(
        "tutorial_flat_record_with_NA",
        flat(company_number="07000009", date_of_creation="NA", postal_code="NA", company_status="NA"),
        Row({"company_number": "07000009", "company_name": "FLAT RECORD LTD", "company_status": None,
             "date_of_creation": None, "postal_code": None, "published_at": utc(PUBLISHED_AT), "event_type": "changed",
             "timepoint": None, "resource_kind": None}),
    ),  # fmt: skip
    LandingCase(
        "tutorial_flat_record_with_NA_company_number",
        flat(company_number="NA"),
        Reject("flat record without company_number"),
        key=None,
    ),
    LandingCase(
        # The bulk CSV's DD/MM/YYYY is for the bulk loader; in the stream it is ambiguous (01/02) and refused.
        "dd_mm_yyyy_date_in_event",
        changed("01000010", date_of_creation="31/12/2020"),
        Reject("date_of_creation 31/12/2020 is not an ISO date (YYYY-MM-DD)"),
    ),
    LandingCase(
        "dd_mm_yyyy_date_in_flat_record",
        flat(company_number="07000011", date_of_creation="04/03/2010"),
        Reject("date_of_creation 04/03/2010 is not an ISO date (YYYY-MM-DD)"),
    ),
    LandingCase(
        "iso_date_in_flat_record",
        flat(company_number="07000012", date_of_creation="2010-03-04"),
        Row({"company_number": "07000012", "date_of_creation": date(2010, 3, 4)}),
    ),
    LandingCase(
        "invalid_date_2024_02_30",
        changed("01000013", date_of_creation="2024-02-30"),
        Reject("date_of_creation 2024-02-30 is not an ISO date (YYYY-MM-DD)"),
    ),
    LandingCase(
        "leap_day_2024_02_29",
        changed("01000014", date_of_creation="2024-02-29"),
        Row({"company_number": "01000014", "date_of_creation": date(2024, 2, 29)}),
    ),
    LandingCase(
        "published_at_with_utc_offset",
        changed("01000015", published_at="2026-11-02T11:00:00+01:00"),
        Row({"company_number": "01000015", "published_at": utc(PUBLISHED_AT)}),
    ),
    LandingCase(
        "event_without_published_at",
        event_bytes(envelope("01000033", company_data("01000033")) | {"event": {"timepoint": 1000, "type": "changed"}}),
        Reject("event.published_at missing is not an ISO timestamp"),
    ),
    LandingCase(
        "published_at_not_a_timestamp",
        changed("01000016", published_at="02/11/2026 10:00"),
        Reject("event.published_at 02/11/2026 10:00 is not an ISO timestamp"),
    ),
    *[
        LandingCase(f"company_number_{number}", changed(number), Row({"company_number": number}))
        for number in ("00000017", "SC000018", "NI000019", "OC300020", "R0000021", "FC000022")
    ],
    LandingCase(
        # A JSON number would lose the leading zeros (00000023 -> 23): refused rather than guessed.
        "company_number_as_json_number",
        event_bytes(envelope("00000023", company_data("00000023", company_number=23))),
        Reject("is not a string"),
        key=b"00000023",
    ),
    LandingCase(
        "non_ascii_and_quote_laden_name",
        changed("01000024", company_name=_QUOTED_NAME),
        Row({"company_number": "01000024", "company_name": _QUOTED_NAME}),
    ),
    LandingCase(
        # Latin-1 bytes (a producer that did not encode UTF-8): refused, the bytes kept for a replay.
        "non_utf8_bytes",
        changed("01000025", company_name="CAFÉ LTD").decode().encode("latin-1"),
        Reject("not UTF-8 text"),
        key=b"01000025",
    ),
    LandingCase(
        # A lone UTF-16 surrogate cannot become text: the JSON reader refuses the message.
        "lone_surrogate_escape",
        changed("01000026", company_name="X").replace(b'"X"', b'"\\udc80X"'),
        Reject("not JSON"),
        key=b"01000026",
    ),
    LandingCase("one_megabyte_message", _one_mb_event(), Row({"company_number": "09000016", "company_name": _BIG_NAME})),
    LandingCase("empty_message", b"", Reject("not JSON"), key=b"01000027"),
    LandingCase("null_value_tombstone", None, Reject("null message value (tombstone)"), key=b"01000028"),
    LandingCase("null_kafka_key", changed("01000029"), Row({"company_number": "01000029"}), key=None),
    LandingCase("html_page_as_message", HTML_503, Reject("not JSON"), key=None),
    LandingCase("truncated_json_message", changed("01000030")[:-20], Reject("not JSON"), key=b"01000030"),
    LandingCase("json_array_message", b'[{"company_number": "01000031"}]', Reject("JSON array, expected an object"), key=None),
    LandingCase(
        # Partition 2 is unknown to the sensor cursor (the local broker has no CreatePartitions, so the
        # topic has it from the start and the cursor names only 0 and 1): its first offset is landed.
        "message_on_a_new_kafka_partition",
        changed("01000032"),
        Row({"company_number": "01000032", "kafka_partition": NEW_KAFKA_PARTITION, "kafka_offset": 0}),
        partition=NEW_KAFKA_PARTITION,
    ),
]


# --- dbt cases -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DbtCase:
    """Events of one bulk company (the n-th case takes the n-th bulk company) in batch 1 and batch 2,
    each a landing run then a dbt build; ``expected`` is its core row after batch 2: (name, status, postal_code)."""

    name: str
    batch_1: tuple[dict, ...]
    batch_2: tuple[dict, ...]
    expected: tuple[str | None, str | None, str | None]


def company_event(
    published_at: str, name: str, status: str, postal_code: str = "EH1 2NG", timepoint: int | None = None
) -> dict:
    """An event's company fields; the number is filled in with the bulk company's, the timepoint
    with the next one unless given (an event sent twice repeats its timepoint)."""
    return {"published_at": published_at, "company_name": name, "company_status": status, "postal_code": postal_code,
            "timepoint": timepoint}  # fmt: skip


DBT_CASES = [
    DbtCase(
        "same_company_twice_in_one_batch",
        batch_1=(),
        batch_2=(
            company_event("2026-11-03T09:00:00", "TWICE FIRST LTD", "active"),
            company_event("2026-11-03T09:00:05", "TWICE SECOND LTD", "liquidation", "G2 1AA"),
        ),
        expected=("TWICE SECOND LTD", "liquidation", "G2 1AA"),
    ),
    DbtCase(
        # Equal published_at: the later Kafka offset is the later event.
        "same_company_twice_in_one_batch_same_second",
        batch_1=(),
        batch_2=(
            company_event("2026-11-03T09:00:00", "TIE FIRST LTD", "active"),
            company_event("2026-11-03T09:00:00", "TIE SECOND LTD", "dissolved"),
        ),
        expected=("TIE SECOND LTD", "dissolved", "EH1 2NG"),
    ),
    DbtCase(
        # The API can send an event twice (docs/architecture.md §3): two offsets, one core row.
        "same_event_sent_twice",
        batch_1=(),
        batch_2=(
            company_event("2026-11-03T09:00:00", "SENT TWICE LTD", "active", timepoint=7001),
            company_event("2026-11-03T09:00:00", "SENT TWICE LTD", "active", timepoint=7001),
        ),
        expected=("SENT TWICE LTD", "active", "EH1 2NG"),
    ),
    DbtCase(
        "older_event_after_a_newer_one",
        batch_1=(company_event("2026-11-03T09:00:00", "NEWER NAME LTD", "active"),),
        batch_2=(company_event("2026-11-01T09:00:00", "STALE NAME LTD", "dissolved", "CF10 1AA"),),
        expected=("NEWER NAME LTD", "active", "EH1 2NG"),
    ),
    DbtCase(
        "older_event_after_a_newer_one_in_the_same_batch",
        batch_1=(),
        batch_2=(
            company_event("2026-11-03T09:00:00", "NEWER NAME LTD", "administration"),
            company_event("2026-11-01T09:00:00", "STALE NAME LTD", "dissolved"),
        ),
        expected=("NEWER NAME LTD", "administration", "EH1 2NG"),
    ),
]


def dbt_event_bytes(number: str, fields: dict, next_timepoint: int) -> bytes:
    return changed(
        number,
        timepoint=fields["timepoint"] or next_timepoint,
        published_at=fields["published_at"],
        company_name=fields["company_name"],
        company_status=fields["company_status"],
        registered_office_address={"postal_code": fields["postal_code"]},
    )


# What the landing cases leave in the core after the dbt build: company number -> its core row
# (name, status, postal_code), or None for no row.
LANDING_OUTCOMES_IN_CORE = {
    "01234567": ("CORPUS 01234567 LIMITED", "active", "EC1A 1BB"),  # iso_event_all_fields
    "07000009": ("FLAT RECORD LTD", None, None),  # tutorial_flat_record_with_NA: NULLs, not "NA"
    "01000005": ("CORPUS 01000005 LIMITED", "active", None),  # missing_registered_office_address
    "01000006": ("CORPUS 01000006 LIMITED", "active", None),  # empty_string_postcode (a known bug)
    "01000007": None,  # unknown_resource_kind: landed, but not a company-profile event
    "01000010": None,  # dd_mm_yyyy_date_in_event: rejected, so never in the core
    "SC100002": None,  # deleted_event_without_data
    "09000016": (_BIG_NAME, "active", "EC1A 1BB"),  # one_megabyte_message
}
# The core outcomes that a known landing bug breaks: company number -> the bug.
KNOWN_CORE_BUGS: dict[str, str] = {}  # company number -> the bug, while a core outcome is not met yet
