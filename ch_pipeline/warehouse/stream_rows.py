"""Kafka messages -> stream rows (docs/architecture.md §5), or -> reject rows with the reason.

Two message shapes are accepted (docs/architecture.md §4): the original Companies House event envelope, and
the tutorial's flat six-field record with ``"NA"`` for missing values. Bad input never fails a
run: a message that is not one of the two shapes becomes a reject row carrying its coordinates,
its bytes (base64) and the error, so it can be inspected and replayed.

The parsing is one SQL query over an Arrow table of raw messages: its JSON reader is C++ and
releases the GIL, so a chunk is parsed while the next one is read (docs/architecture.md §11). The
same query serves both warehouses: DuckDB runs it inside its landing transaction, straight into the
file (``parse_query(raw_event=True)``, ``DuckDBWarehouse.land_messages``); for BigQuery an in-memory DuckDB
runs it and its Arrow output is loaded (``StreamBatchBuilder``).

Decisions: every ``event.type`` other than ``changed``/``deleted`` is rejected (dbt's accepted
values); an unknown ``resource_kind`` is landed with its kind (the stream table is the faithful
record of the topic; dbt keeps ``company-profile``); a ``deleted`` event without ``data`` takes its
company number from the ``resource_uri`` (``/company/{number}``) or the message key. Dates must be
ISO ``YYYY-MM-DD``; ``published_at`` ISO, UTC when it carries no offset.
"""

from __future__ import annotations

import functools
import itertools
import operator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any, Callable, Iterable

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ch_pipeline.warehouse.landing import message_bytes
from ch_pipeline.warehouse.schema import REJECT_COLUMNS, STREAM_COLUMNS, arrow_schema

STREAM_SCHEMA = arrow_schema(STREAM_COLUMNS)
REJECT_SCHEMA = arrow_schema(REJECT_COLUMNS)
RAW_SCHEMA = pa.schema(
    [
        pa.field("kafka_partition", pa.int32(), nullable=False),
        pa.field("kafka_offset", pa.int64(), nullable=False),
        pa.field("kafka_timestamp", pa.timestamp("ms", tz="UTC")),
        pa.field("kafka_key", pa.binary()),
        pa.field("value", pa.binary()),
    ]
)

# JSON paths read from every message, extracted in one pass each for types and for text.
_PATHS = {
    "event": "$.event",
    "resource_kind": "$.resource_kind",
    "resource_uri": "$.resource_uri",
    "event_type": "$.event.type",
    "event_published_at": "$.event.published_at",
    "timepoint": "$.event.timepoint",
    "data": "$.data",
    "data_company_name": "$.data.company_name",
    "data_company_number": "$.data.company_number",
    "data_company_status": "$.data.company_status",
    "data_date_of_creation": "$.data.date_of_creation",
    "address": "$.data.registered_office_address",
    "address_postal_code": "$.data.registered_office_address.postal_code",
}
# The flat record's paths, read only from messages that are not events (``tf``/``vf``): every path
# costs each message its own look-up, and events are nearly all of a stream.
_FLAT_PATHS = {
    "flat_company_name": "$.company_name",
    "flat_company_number": "$.company_number",
    "flat_company_status": "$.company_status",
    "flat_date_of_creation": "$.date_of_creation",
    "flat_postal_code": "$.postal_code",
    "flat_published_at": "$.published_at",
}
# Objects are only type-checked: extracting their text would copy most of the message again.
_OBJECTS = {"event", "data", "address"}
_VALUE_PATHS = {name: path for name, path in _PATHS.items() if name not in _OBJECTS}
# DuckDB lists are 1-based; the type list t starts with the document's own type ('$').
_TYPE_PATHS = ["$", *_PATHS.values()]
_T_INDEX = {name: position + 2 for position, name in enumerate(_PATHS)}
_V_INDEX = {name: position + 1 for position, name in enumerate(_VALUE_PATHS)}
_F_INDEX = {name: position + 1 for position, name in enumerate(_FLAT_PATHS)}


def _t(name: str) -> str:
    return f"tf[{_F_INDEX[name]}]" if name in _F_INDEX else f"t[{_T_INDEX[name]}]"


def _v(name: str) -> str:
    return f"vf[{_F_INDEX[name]}]" if name in _F_INDEX else f"v[{_V_INDEX[name]}]"


def _is_text(name: str) -> str:
    """Absent, JSON null or a JSON string."""
    return f"coalesce({_t(name)} IN ('VARCHAR', 'NULL'), true)"


def _flat(name: str) -> str:
    """A flat record's value: the tutorial wrote "NA" for missing."""
    return f"nullif({_v('flat_' + name)}, 'NA')"


_ISO_DATE = r"\d{4}-\d{2}-\d{2}"
ISO_TIMESTAMP = r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}(:?\d{2})?)?"


def _bad_date(text: str) -> str:
    return f"({text} IS NOT NULL AND (NOT regexp_full_match({text}, '{_ISO_DATE}') OR TRY_CAST({text} AS DATE) IS NULL))"


def _bad_timestamp(text: str) -> str:
    return f"({text} IS NULL OR NOT regexp_full_match({text}, '{ISO_TIMESTAMP}') OR TRY_CAST({text} AS TIMESTAMPTZ) IS NULL)"


_EVENT_NUMBER = (
    f"coalesce(nullif({_v('data_company_number')}, ''), "
    f"nullif(regexp_extract({_v('resource_uri')}, '/company/([A-Za-z0-9]+)', 1), ''), "
    "nullif(TRY(decode(kafka_key)), ''))"
)

# The first failing rule names the error; NULL means the message is a stream row.
_ERROR = f"""
CASE
  WHEN value IS NULL THEN 'null message value (tombstone)'
  WHEN text IS NULL THEN 'not UTF-8 text'
  WHEN doc_type IS NULL THEN 'not JSON'
  WHEN doc_type <> 'OBJECT' THEN 'JSON ' || lower(doc_type) || ', expected an object'
  WHEN is_event THEN CASE
    WHEN {_t('event')} IS DISTINCT FROM 'OBJECT' THEN '''event'' is missing or not an object'
    WHEN {_t('event_type')} IS DISTINCT FROM 'VARCHAR' OR {_v('event_type')} NOT IN ('changed', 'deleted')
      THEN 'event.type ' || coalesce({_v('event_type')}, 'missing') || ' is not changed or deleted'
    WHEN coalesce({_t('data')}, 'NULL') NOT IN ('OBJECT', 'NULL') THEN '''data'' is not an object'
    WHEN coalesce({_t('data')}, 'NULL') = 'NULL' AND {_v('event_type')} = 'changed' THEN 'a ''changed'' event without ''data'''
    WHEN coalesce({_t('address')}, 'NULL') NOT IN ('OBJECT', 'NULL') THEN 'data.registered_office_address is not an object'
    WHEN NOT ({_is_text('data_company_name')} AND {_is_text('data_company_number')} AND {_is_text('data_company_status')}
              AND {_is_text('data_date_of_creation')} AND {_is_text('address_postal_code')} AND {_is_text('resource_kind')})
      THEN 'a company field (name, number, status, date_of_creation, postal_code, resource_kind) is not a string'
    WHEN {_EVENT_NUMBER} IS NULL THEN 'no company number in data, resource_uri or key'
    WHEN coalesce({_t('timepoint')}, 'NULL') <> 'NULL' AND ({_t('timepoint')} <> 'UBIGINT' OR TRY_CAST({_v('timepoint')} AS BIGINT) IS NULL)
      THEN 'event.timepoint ' || {_v('timepoint')} || ' is not a non-negative 64-bit integer'
    WHEN {_bad_date(_v('data_date_of_creation'))} THEN 'date_of_creation ' || {_v('data_date_of_creation')} || ' is not an ISO date (YYYY-MM-DD)'
    WHEN {_t('event_published_at')} IS DISTINCT FROM 'VARCHAR' OR {_bad_timestamp(_v('event_published_at'))}
      THEN 'event.published_at ' || coalesce({_v('event_published_at')}, 'missing') || ' is not an ISO timestamp'
  END
  WHEN is_flat THEN CASE
    WHEN NOT ({_is_text('flat_company_name')} AND {_is_text('flat_company_number')} AND {_is_text('flat_company_status')}
              AND {_is_text('flat_date_of_creation')} AND {_is_text('flat_postal_code')} AND {_is_text('flat_published_at')})
      THEN 'a flat record field is not a string'
    WHEN nullif({_flat('company_number')}, '') IS NULL THEN 'flat record without company_number'
    WHEN {_bad_date(_flat('date_of_creation'))} THEN 'date_of_creation ' || {_flat('date_of_creation')} || ' is not an ISO date (YYYY-MM-DD)'
    WHEN {_bad_timestamp(_flat('published_at'))} THEN 'published_at ' || coalesce({_flat('published_at')}, 'missing') || ' is not an ISO timestamp'
  END
  ELSE 'neither a Companies House event (no ''event'') nor a flat record (no ''company_number''/''published_at'')'
END"""


def parse_query(raw_event: bool = False) -> str:
    """One streaming pass: every message's error (NULL for a good one), its stream-row fields and its
    reject-row fields; Arrow then splits the two. TRY_CAST: the fields of rejected rows are computed
    too and must not raise. ``raw_event``: also the message text (the decoded bytes, exactly as
    received) as ``raw_event``, for a warehouse that parses straight into its landing table
    (``DuckDBWarehouse.land_messages``), like ``envelope_rows.envelope_query``."""
    raw_event_column = ",\n  text AS raw_event" if raw_event else ""
    return f"""
WITH decoded AS (
  SELECT *, TRY(decode(value)) AS text FROM raw_messages
), typed AS (
  -- One parse yields validity and every type: json_type raises on malformed JSON, TRY makes it NULL.
  SELECT *, TRY(json_type(text, {_TYPE_PATHS})) AS t FROM decoded
), documents AS (
  SELECT *, t[1] AS doc_type,
         CASE WHEN t IS NOT NULL THEN json_extract_string(text, {list(_VALUE_PATHS.values())}) END AS v
  FROM typed
), evented AS (
  SELECT *, {_t('event')} IS NOT NULL OR {_t('resource_kind')} IS NOT NULL AS is_event FROM documents
), flat AS (
  -- The flat paths of a parsed document that is no event (CASE evaluates them for those rows only).
  SELECT *,
         CASE WHEN t IS NOT NULL AND NOT is_event THEN json_type(text, {list(_FLAT_PATHS.values())}) END AS tf,
         CASE WHEN t IS NOT NULL AND NOT is_event THEN json_extract_string(text, {list(_FLAT_PATHS.values())}) END AS vf
  FROM evented
), shaped AS (
  SELECT *, coalesce({_t('flat_company_number')} IS NOT NULL AND {_t('flat_published_at')} IS NOT NULL, false) AS is_flat
  FROM flat
), parsed AS (
  SELECT *, {_ERROR} AS error FROM shaped
)
SELECT
  error,
  CASE WHEN is_event THEN {_v('data_company_name')} ELSE {_flat('company_name')} END AS company_name,
  CASE WHEN is_event THEN {_EVENT_NUMBER} ELSE {_flat('company_number')} END AS company_number,
  CASE WHEN is_event THEN {_v('data_company_status')} ELSE {_flat('company_status')} END AS company_status,
  TRY_CAST(CASE WHEN is_event THEN {_v('data_date_of_creation')} ELSE {_flat('date_of_creation')} END AS DATE) AS date_of_creation,
  -- An empty postcode is a missing one (NULL), as in the bulk load, so bulk and stream rows agree.
  nullif(trim(CASE WHEN is_event THEN {_v('address_postal_code')} ELSE {_flat('postal_code')} END), '') AS postal_code,
  TRY_CAST(CASE WHEN is_event THEN {_v('event_published_at')} ELSE {_flat('published_at')} END AS TIMESTAMPTZ) AS published_at,
  CASE WHEN is_event THEN {_v('event_type')} ELSE 'changed' END AS event_type,
  CASE WHEN is_event THEN TRY_CAST({_v('timepoint')} AS BIGINT) END AS timepoint,
  CASE WHEN is_event THEN {_v('resource_kind')} END AS resource_kind,
  kafka_partition, kafka_offset, CAST(kafka_timestamp AS TIMESTAMPTZ) AS kafka_timestamp,
  $stream_partition AS stream_partition, CAST($ingested_at AS TIMESTAMPTZ) AS ingested_at,
  CASE WHEN error IS NOT NULL THEN base64(kafka_key) END AS kafka_key,
  CASE WHEN error IS NOT NULL THEN base64(value) END AS raw_value_base64{raw_event_column}
FROM parsed
"""


_PARSE = parse_query()


def _binary_array(items: list[bytes | None]) -> pa.Array:
    """A binary Arrow array of bytes objects (None: null), built from one joined buffer: pa.array
    would copy each message into a growing buffer. Without nulls (nearly every chunk) each step is
    one C-level pass: no Python generator per item."""
    has_nulls = None in items
    present = [item or b"" for item in items] if has_nulls else items
    lengths = np.fromiter(map(len, present), np.int64, len(items))
    offsets = np.zeros(len(items) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        return pa.array(items, pa.binary())  # over 2 GiB: pyarrow splits it into chunks
    offsets = offsets.astype(np.int32)
    validity = None
    if has_nulls:
        nulls = np.fromiter((item is None for item in items), np.bool_, len(items))
        validity = pa.array(~nulls).buffers()[1]
    data = pa.py_buffer(b"".join(present))
    return pa.Array.from_buffers(pa.binary(), len(items), [validity, pa.py_buffer(offsets), data])


_VALUE, _KEY, _TIMESTAMP = operator.methodcaller("value"), operator.methodcaller("key"), operator.methodcaller("timestamp")
_PARTITION, _OFFSET = operator.methodcaller("partition"), operator.methodcaller("offset")


def raw_messages_table(messages: list[Any]) -> pa.Table:
    """Kafka ``Message``s -> an Arrow table in ``RAW_SCHEMA``: a few calls per message, no per-message Python objects kept."""
    count = len(messages)
    # (kind, millis); kind 0 is TIMESTAMP_NOT_AVAILABLE.
    kinds, millis = np.fromiter(itertools.chain.from_iterable(map(_TIMESTAMP, messages)), np.int64, 2 * count).reshape(count, 2).T
    columns = [
        pa.array(np.fromiter(map(_PARTITION, messages), np.int32, count)),
        pa.array(np.fromiter(map(_OFFSET, messages), np.int64, count)),
        pa.array(millis, pa.timestamp("ms", tz="UTC"), mask=(kinds == 0) | (millis < 0)),
        _binary_array(list(map(_KEY, messages))),
        _binary_array(list(map(_VALUE, messages))),
    ]
    return pa.Table.from_arrays(columns, schema=RAW_SCHEMA)


@functools.cache
def parse_engine() -> duckdb.DuckDBPyConnection:
    """One in-memory DuckDB per process (its JSON extension loads once); each parse uses a cursor."""
    return duckdb.connect(":memory:")


def parse_raw_messages(raw: pa.Table, stream_partition: str, ingested_at: datetime) -> tuple[pa.Table, pa.Table]:
    """(stream rows, reject rows) of an Arrow table in ``RAW_SCHEMA``; every message is in exactly one."""
    with parse_engine().cursor() as con:
        con.execute("SET TimeZone = 'UTC'")  # published_at without an offset is UTC
        con.register("raw_messages", raw)
        parsed = con.sql(_PARSE, params={"stream_partition": stream_partition, "ingested_at": ingested_at}).to_arrow_table()
    # A stream row's raw_event is its message value: the raw bytes themselves, not a copy made by the
    # query (DuckDB decoded them as UTF-8, so unchecked is exact).
    rows = parsed.append_column("raw_event", raw.column("value").cast(pa.string(), safe=False))
    is_good = pc.is_null(parsed.column("error"))
    if parsed.column("error").null_count < parsed.num_rows:  # some rejects (usually none: no copy then)
        rows = rows.filter(is_good)
    rows = rows.select(STREAM_SCHEMA.names).cast(STREAM_SCHEMA)
    rejects = parsed.filter(pc.invert(is_good)).select(REJECT_SCHEMA.names).cast(REJECT_SCHEMA)
    return rows, rejects


# Chunks read but not yet parsed: a read faster than the parser holds at most this many raw chunks.
MAX_QUEUED_CHUNKS = 2


class StreamBatchBuilder:
    """Parses the messages of one stream partition chunk by chunk, into stream and reject tables.

    Each chunk is parsed on a worker thread while the caller reads the next one from Kafka
    (DuckDB releases the GIL); the read waits when ``MAX_QUEUED_CHUNKS`` are still unparsed.
    """

    def __init__(
        self,
        stream_partition: str,
        ingested_at: datetime,
        parse: Callable[[pa.Table, str, datetime], tuple[pa.Table, pa.Table]] = parse_raw_messages,
        row_schema: pa.Schema = STREAM_SCHEMA,
    ) -> None:
        """``parse``/``row_schema``: the companies parser by default; the other streams pass theirs
        (``envelope_rows.envelope_parser``), so reading, threading and memory bounds stay one code path."""
        self.stream_partition = stream_partition
        self.ingested_at = ingested_at
        self._parse_chunk = parse
        self._row_schema = row_schema
        self.bytes = 0
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-rows")
        self._pending: list[Future] = []
        self._parsed: tuple[pa.Table, pa.Table] | None = None

    def add(self, messages: Iterable[Any]) -> None:
        """Add confluent-kafka ``Message``s (anything with value/key/partition/offset/timestamp)."""
        self.add_raw(raw_messages_table(list(messages)))

    def add_raw(self, raw: pa.Table) -> None:
        """Add messages already in an Arrow table in ``RAW_SCHEMA`` (``raw_messages_table``)."""
        self.bytes += message_bytes(raw)
        self._pending.append(self._worker.submit(self._parse_chunk, raw, self.stream_partition, self.ingested_at))
        self._parsed = None
        if len(self._pending) > MAX_QUEUED_CHUNKS:  # the read waits for the parser: bounded memory
            self._pending[-MAX_QUEUED_CHUNKS - 1].result()

    def _parse(self) -> tuple[pa.Table, pa.Table]:
        if self._parsed is None:
            try:
                parts = [future.result() for future in self._pending]
            finally:
                self._worker.shutdown(wait=False)
            self._parsed = (
                pa.concat_tables([rows for rows, _ in parts]) if parts else self._row_schema.empty_table(),
                pa.concat_tables([rejects for _, rejects in parts]) if parts else REJECT_SCHEMA.empty_table(),
            )
        return self._parsed

    def stream_table(self) -> pa.Table:
        return self._parse()[0]

    def rejects_table(self) -> pa.Table:
        return self._parse()[1]
