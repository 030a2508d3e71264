"""The landing tables of the non-companies streams, as the test side sees them (issue 15).

The table the landing assets write (``spec.landing_table``, columns from ch_pipeline/warehouse/schema.py).
``landed`` gives generated events their Kafka coordinates; ``contract_rows`` turns them into the table's
rows (a converter written independently of the landing's parser, ch_pipeline/warehouse/envelope_rows.py,
whose own tests cover the real path); ``land_duckdb`` and ``land_bigquery`` append them.
"""

from __future__ import annotations

import copy
import io
import json
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow as pa

from ch_pipeline.companies_house.events import event_bytes
from ch_pipeline.companies_house.streams import STREAMS, StreamSpec, field_at, item_key_of, kafka_key_of
from ch_pipeline.warehouse import schema
from ch_pipeline.warehouse.schema import Column, bigquery_ddl

# dbt model prefix (ch_dbt/macros/streams.sql) -> stream name (streams.py).
MODEL_STREAMS = {
    "filings": "filings",
    "officers": "officers",
    "pscs": "persons-with-significant-control",
    "charges": "charges",
    "insolvency": "insolvency-cases",
    "disqualified_officers": "disqualified-officers",
    "exemptions": "company-exemptions",
    "psc_statements": "persons-with-significant-control-statements",
}
# The row fields the models type (the rest are text; JSON_FIELDS JSON text).
DATE_FIELDS = {"appointed_on", "resigned_on", "notified_on", "ceased_on", "created_on", "satisfied_on", "date",
               "disqualified_from", "disqualified_until"}  # fmt: skip
INT_FIELDS = {"charge_number"}
JSON_FIELDS = {"natures_of_control", "case_types", "case_dates", "exemption_types"}



def landing_table(spec: StreamSpec) -> str:
    return spec.landing_table


def landing_columns(spec: StreamSpec) -> list[Column]:
    """The landing table's columns, from the one definition the landing writes (warehouse/schema.py)."""
    return schema.landing_columns(spec)


@dataclass
class Landed:
    """An event with its Kafka coordinates."""

    event: dict
    partition: int
    offset: int
    kafka_timestamp: datetime


def published_at(event: dict) -> datetime | None:
    text = event["event"].get("published_at")
    if not text:
        return None
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


class Topic:
    """Kafka coordinates for a stream's events: the partition of their key (``partitions`` of them),
    the next offset in it; the Kafka timestamp a second after ``published_at``."""

    def __init__(self, spec: StreamSpec, partitions: int = 2) -> None:
        self.spec = spec
        self.partitions = partitions
        self.next_offset = [0] * partitions

    def place(self, event: dict, partition: int | None = None, offset: int | None = None) -> Landed:
        if partition is None:
            partition = zlib.crc32((kafka_key_of(self.spec, event) or "").encode()) % self.partitions
        if offset is None:
            offset = self.next_offset[partition]
        self.next_offset[partition] = max(self.next_offset[partition], offset + 1)
        return Landed(event, partition, offset, (published_at(event) or datetime.now(timezone.utc)) + timedelta(seconds=1))


def as_text(value) -> str | None:
    """A row field as the landing stores it: scalars as text, lists/objects as compact JSON text."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def contract_rows(spec: StreamSpec, landed: list[Landed], stream_partition: str, ingested_at: datetime) -> pa.Table:
    columns = landing_columns(spec)
    rows = []
    for item in landed:
        event = item.event
        company, item_id = item_key_of(spec, event)
        data = event.get("data") or {}
        rows.append({
            "company_number": company, "item_id": item_id, "resource_kind": event.get("resource_kind"),
            "resource_uri": event.get("resource_uri"), "resource_id": event.get("resource_id"),
            "event_type": event["event"].get("type"), "timepoint": event["event"].get("timepoint"),
            "published_at": published_at(event),
            **{column: as_text(field_at(data, path)) for column, path in spec.row_fields},
            "kafka_partition": item.partition, "kafka_offset": item.offset, "kafka_timestamp": item.kafka_timestamp,
            "stream_partition": stream_partition, "ingested_at": ingested_at, "raw_event": event_bytes(event).decode(),
        })  # fmt: skip
    schema = pa.schema([pa.field(c.name, c.arrow_type) for c in columns])
    return pa.Table.from_pylist(rows, schema=schema)


def duckdb_ddl(spec: StreamSpec) -> str:
    return f"create table if not exists {landing_table(spec)} ({', '.join(f'{c.name} {c.duckdb_type}' for c in landing_columns(spec))})"


def land_duckdb(db: Path, spec: StreamSpec, rows: pa.Table) -> None:
    with duckdb.connect(str(db)) as con:
        con.execute(duckdb_ddl(spec))
        con.register("landing_rows", rows)
        names = ", ".join(c.name for c in landing_columns(spec))
        con.execute(f"insert into {landing_table(spec)} ({names}) select {names} from landing_rows")


def land_bigquery(client, dataset: str, spec: StreamSpec, rows: pa.Table) -> None:
    """Through a staging table loaded from CSV (the emulator's only load format), then INSERT."""
    from ch_pipeline.warehouse.bigquery_warehouse import load_job_config, to_csv

    columns = landing_columns(spec)
    table = landing_table(spec)
    client.query(bigquery_ddl(table, columns, dataset) + ";").result()
    staging = f"{dataset}.{table}__staging"
    client.load_table_from_file(io.BytesIO(to_csv(rows)), staging, job_config=load_job_config(columns)).result()
    names = ", ".join(c.name for c in columns)
    client.query(f"insert into `{dataset}.{table}` ({names}) select {names} from `{staging}`").result()
    client.delete_table(staging, not_found_ok=True)


# The row field a test event is tagged in, to see which version of an item a model holds.
_TAG_FIELD = {"filings": "description", "officers": "name", "persons-with-significant-control": "name", "charges": "status",
              "insolvency-cases": "status", "disqualified-officers": "surname",
              "persons-with-significant-control-statements": "statement"}  # fmt: skip


def tagged(spec: StreamSpec, event: dict, tag: str, timepoint: int, published: datetime | None = None) -> dict:
    """A copy of a `changed` event with ``tag`` in one of its row fields, a new timepoint and, if
    given, a new published_at."""
    event = copy.deepcopy(event)
    data = event.setdefault("data", {})
    if spec.name == "company-exemptions":
        data["exemptions"] = {"tagged": {"exemption_type": tag}}
    else:
        data[_TAG_FIELD[spec.name]] = tag
    event["event"]["type"] = "changed"
    event["event"]["timepoint"] = timepoint
    if published is not None:
        event["event"]["published_at"] = published.strftime("%Y-%m-%dT%H:%M:%S")
    return event


def deletion(event: dict, timepoint: int, published: datetime) -> dict:
    deleted = {key: value for key, value in copy.deepcopy(event).items() if key != "data"}
    deleted["event"] = {"timepoint": timepoint, "published_at": published.strftime("%Y-%m-%dT%H:%M:%S"), "type": "deleted"}
    return deleted


def specs() -> dict[str, StreamSpec]:
    return {model: STREAMS[name] for model, name in MODEL_STREAMS.items()}
