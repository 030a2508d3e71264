"""Kafka messages of any stream but companies -> landing rows, or -> reject rows with the reason.

Every stream other than ``/companies`` sends the same envelope (``resource_kind``, ``resource_uri``,
``resource_id``, ``data``, ``event{timepoint, published_at, type}``), so one parser serves them all,
configured by the stream's ``StreamSpec``: how its items are keyed (``item_key_of``) and which
``data`` fields become columns (``row_fields``). As for companies (``stream_rows``), the parsing is
one DuckDB SQL query over the Arrow table of raw messages, and every message ends up in exactly
one of the two outputs.

Decisions (the landing table is the faithful record of the topic; dbt decides what is current):
- rejected: null value, non-UTF-8, not JSON, not an object, no ``event`` object, ``event.type``
  other than changed/deleted, ``data`` not an object, a ``changed`` event without ``data``, a
  non-string envelope field, no item id, no company number where the stream is under a company,
  a missing or non-integer ``timepoint`` (the completeness check needs it), a missing or
  non-ISO ``published_at`` (``...Z`` and fractional seconds accepted; UTC without an offset);
- landed as sent: an unknown ``resource_kind``, any ``data`` fields not in ``row_fields``.
Row fields are text: a JSON string as its value, anything else as compact JSON; a path through
``[]`` or ``*`` (``cases[].type``) gives the JSON list of its matches, NULL when none match.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from ch_pipeline.companies_house.streams import StreamSpec
from ch_pipeline.warehouse.schema import REJECT_COLUMNS, arrow_schema, landing_columns
from ch_pipeline.warehouse.stream_rows import ISO_TIMESTAMP, parse_engine

REJECT_SCHEMA = arrow_schema(REJECT_COLUMNS)

# Envelope paths whose JSON type is checked, and those whose text is read.
_TYPES = ["$", "$.event", "$.event.type", "$.event.timepoint", "$.event.published_at", "$.data",
          "$.resource_kind", "$.resource_uri", "$.resource_id"]  # fmt: skip
_TEXTS = ["$.event.type", "$.event.timepoint", "$.event.published_at", "$.resource_kind", "$.resource_uri", "$.resource_id"]


def _t(path: str) -> str:
    return f"t[{_TYPES.index(path) + 1}]"  # DuckDB lists are 1-based


def _v(path: str) -> str:
    return f"v[{_TEXTS.index(path) + 1}]"


def _is_text(path: str) -> str:
    """Absent, JSON null or a JSON string."""
    return f"coalesce({_t(path)} IN ('VARCHAR', 'NULL'), true)"


def is_spread(path: str) -> bool:
    """A ``field_at`` path that matches many values (``cases[].type``, ``exemptions.*.exemption_type``)."""
    return any(step.endswith("[]") or step == "*" for step in path.split("."))


def json_path(path: str) -> str:
    """A ``field_at`` path into ``data`` as a DuckDB JSON path: ``cases[].type`` -> ``$.data.cases[*].type``."""
    return "$.data." + path.replace("[]", "[*]")


def _parsed_only(expression: str) -> str:
    """``expression`` for parsed documents only (the JSON functions raise on malformed JSON)."""
    return f"CASE WHEN t IS NOT NULL THEN {expression} END"


def _row_fields(spec: StreamSpec) -> tuple[list[str], list[str]]:
    """SQL of the row fields: (extractions for the ``documents`` step, output columns).

    Scalar paths are read in one ``json_extract_string`` call (a string's value, any other JSON value
    as its compact text); each spread path by its own ``json_extract`` (a list of JSON values)."""
    scalars = [(column, path) for column, path in spec.row_fields if not is_spread(path)]
    extractions, outputs = [], []
    if scalars:
        extractions.append(_parsed_only(f"json_extract_string(text, {[json_path(path) for _, path in scalars]})") + " AS scalars")
    for column, path in spec.row_fields:
        if is_spread(path):
            extractions.append(_parsed_only(f"json_extract(text, '{json_path(path)}')") + f" AS spread_{column}")
            outputs.append(f"CASE WHEN len(spread_{column}) > 0 THEN CAST(to_json(spread_{column}) AS VARCHAR) END AS {column}")
        else:
            outputs.append(f"scalars[{scalars.index((column, path)) + 1}] AS {column}")
    return extractions, outputs


def _keys(spec: StreamSpec) -> tuple[str, str]:
    """SQL for (company_number, item_id), as ``streams.item_key_of`` keys an item."""
    uri, resource_id = _v("$.resource_uri"), f"nullif({_v('$.resource_id')}, '')"
    uri_company = f"nullif(regexp_extract({uri}, '^/?company/([^/]+)', 1), '')"
    last_segment = f"nullif(regexp_extract({uri}, '([^/]+)/*$', 1), '')"
    if not spec.under_company:
        return "CAST(NULL AS VARCHAR)", f"coalesce({last_segment}, {resource_id})"
    if spec.per_company:
        company = f"coalesce({uri_company}, {resource_id})"
        return company, company
    return uri_company, f"coalesce({last_segment}, {resource_id})"


def _error(spec: StreamSpec) -> str:
    """The first failing rule names the error; NULL means the message is a landing row."""
    event_type, timepoint, published = _v("$.event.type"), _v("$.event.timepoint"), _v("$.event.published_at")
    data_type = f"coalesce({_t('$.data')}, 'NULL')"
    company_rule = (
        "WHEN company_number IS NULL THEN 'no company number in resource_uri (/company/<number>/...)'"
        if spec.under_company else ""
    )  # fmt: skip
    return f"""
CASE
  WHEN value IS NULL THEN 'null message value (tombstone)'
  WHEN text IS NULL THEN 'not UTF-8 text'
  WHEN t IS NULL THEN 'not JSON'
  WHEN t[1] <> 'OBJECT' THEN 'JSON ' || lower(t[1]) || ', expected an object'
  WHEN {_t('$.event')} IS DISTINCT FROM 'OBJECT' THEN '''event'' is missing or not an object'
  WHEN {_t('$.event.type')} IS DISTINCT FROM 'VARCHAR' OR {event_type} NOT IN ('changed', 'deleted')
    THEN 'event.type ' || coalesce({event_type}, 'missing') || ' is not changed or deleted'
  WHEN {data_type} NOT IN ('OBJECT', 'NULL') THEN '''data'' is not an object'
  WHEN {data_type} = 'NULL' AND {event_type} = 'changed' THEN 'a ''changed'' event without ''data'''
  WHEN NOT ({_is_text('$.resource_kind')} AND {_is_text('$.resource_uri')} AND {_is_text('$.resource_id')})
    THEN 'resource_kind, resource_uri or resource_id is not a string'
  WHEN item_id IS NULL THEN 'no item id: neither resource_uri nor resource_id'
  {company_rule}
  WHEN {_t('$.event.timepoint')} IS DISTINCT FROM 'UBIGINT' OR TRY_CAST({timepoint} AS BIGINT) IS NULL
    THEN 'event.timepoint ' || coalesce({timepoint}, 'missing') || ' is not a non-negative 64-bit integer'
  WHEN {_t('$.event.published_at')} IS DISTINCT FROM 'VARCHAR' OR NOT regexp_full_match({published}, '{ISO_TIMESTAMP}')
       OR TRY_CAST({published} AS TIMESTAMPTZ) IS NULL
    THEN 'event.published_at ' || coalesce({published}, 'missing') || ' is not an ISO timestamp'
END"""


@functools.cache
def envelope_query(spec: StreamSpec, raw_event: bool = False) -> str:
    """The parse of one chunk of ``spec``'s messages: every message's error (NULL for a good one),
    its landing-row fields and its reject-row fields. TRY_CAST: rejected rows are computed too.
    ``raw_event``: also the message text as ``raw_event`` (the bytes as received), for a warehouse
    that parses straight into its landing table (``DuckDBWarehouse.land_messages``)."""
    extractions, row_fields = _row_fields(spec)
    company, item = _keys(spec)
    raw_event_column = ",\n  text AS raw_event" if raw_event else ""
    return f"""
WITH decoded AS (
  SELECT *, TRY(decode(value)) AS text FROM raw_messages
), typed AS (
  -- One parse yields validity and every type: json_type raises on malformed JSON, TRY makes it NULL.
  SELECT *, TRY(json_type(text, {_TYPES})) AS t FROM decoded
), documents AS (
  SELECT *, CASE WHEN t IS NOT NULL THEN json_extract_string(text, {_TEXTS}) END AS v{"".join(", " + e for e in extractions)}
  FROM typed
), keyed AS (
  SELECT *, {company} AS company_number, {item} AS item_id FROM documents
), parsed AS (
  SELECT *, {_error(spec)} AS error FROM keyed
)
SELECT
  error, company_number, item_id,
  {_v('$.resource_kind')} AS resource_kind, {_v('$.resource_uri')} AS resource_uri, {_v('$.resource_id')} AS resource_id,
  {_v('$.event.type')} AS event_type,
  TRY_CAST({_v('$.event.timepoint')} AS BIGINT) AS timepoint,
  TRY_CAST({_v('$.event.published_at')} AS TIMESTAMPTZ) AS published_at,
  {"".join(f + ", " for f in row_fields)}kafka_partition, kafka_offset, CAST(kafka_timestamp AS TIMESTAMPTZ) AS kafka_timestamp,
  $stream_partition AS stream_partition, CAST($ingested_at AS TIMESTAMPTZ) AS ingested_at,
  CASE WHEN error IS NOT NULL THEN base64(kafka_key) END AS kafka_key,
  CASE WHEN error IS NOT NULL THEN base64(value) END AS raw_value_base64{raw_event_column}
FROM parsed
"""


def parse_envelope_messages(spec: StreamSpec, raw: pa.Table, stream_partition: str, ingested_at: datetime) -> tuple[pa.Table, pa.Table]:
    """(landing rows, reject rows) of an Arrow table in ``stream_rows.RAW_SCHEMA``; every message is in exactly one."""
    row_schema = arrow_schema(landing_columns(spec))
    with parse_engine().cursor() as con:
        con.execute("SET TimeZone = 'UTC'")  # published_at without an offset is UTC
        con.register("raw_messages", raw)
        parsed = con.sql(envelope_query(spec), params={"stream_partition": stream_partition, "ingested_at": ingested_at}).to_arrow_table()
    # raw_event is the message value itself (DuckDB decoded the landed ones as UTF-8, so unchecked is exact).
    rows = parsed.append_column("raw_event", raw.column("value").cast(pa.string(), safe=False))
    is_good = pc.is_null(parsed.column("error"))
    rows = rows.filter(is_good).select(row_schema.names).cast(row_schema)
    rejects = parsed.filter(pc.invert(is_good)).select(REJECT_SCHEMA.names).cast(REJECT_SCHEMA)
    return rows, rejects


def envelope_parser(spec: StreamSpec) -> Callable[[pa.Table, str, datetime], tuple[pa.Table, pa.Table]]:
    """``parse_envelope_messages`` for ``spec``, in the shape ``StreamBatchBuilder`` calls."""
    return functools.partial(parse_envelope_messages, spec)
