"""DuckDB landing: replaces a partition's offsets atomically, never duplicates, never half-lands."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import duckdb
import pytest

from ch_pipeline.defs.resources import WarehouseResource
from ch_pipeline.kafka.offsets import OffsetRange, format_partition_key
from ch_pipeline.warehouse.landing import LandingBatch
from ch_pipeline.warehouse.schema import REJECT_COLUMNS, REJECTS_TABLE, STREAM_TABLE, duckdb_ddl
from ch_pipeline.warehouse.stream_rows import StreamBatchBuilder
from ch_pipeline_tests.warehouse.messages import company_event
from ch_pipeline_tests.support.kafka import FakeMessage


def batch_of(ranges: list[OffsetRange], bad_every: int = 10, name_suffix: str = "") -> LandingBatch:
    key = format_partition_key(ranges)
    builder = StreamBatchBuilder(key, datetime.now(timezone.utc))
    messages = []
    for r in ranges:
        for offset in range(r.first, r.last + 1):
            event = company_event(offset)
            if name_suffix and "data" in event:
                event["data"]["company_name"] += name_suffix
            value = b"bad" if offset % bad_every == 0 else json.dumps(event).encode()
            messages.append(FakeMessage(r.partition, offset, value))
    builder.add(messages)
    return LandingBatch(key, ranges, builder.stream_table(), builder.rejects_table())


def counts(path) -> tuple[int, int, int]:
    with duckdb.connect(str(path), read_only=True) as con:
        rows = con.execute(f"SELECT count(*), count(DISTINCT (kafka_partition, kafka_offset)) FROM {STREAM_TABLE}").fetchone()
        rejects = con.execute(f"SELECT count(*) FROM {REJECTS_TABLE}").fetchone()[0]
    return rows[0], rows[1], rejects


@pytest.fixture
def warehouse(tmp_path):
    return WarehouseResource(duckdb_path=str(tmp_path / "w.duckdb"))


def test_landing_twice_replaces_instead_of_duplicating(warehouse):
    batch = batch_of([OffsetRange(0, 0, 99), OffsetRange(1, 50, 149)])
    warehouse.warehouse().land(batch)
    warehouse.warehouse().land(batch)
    assert counts(warehouse.duckdb_path) == (180, 180, 20)
    warehouse.warehouse().land(batch_of([OffsetRange(0, 100, 109)]))
    assert counts(warehouse.duckdb_path) == (189, 189, 21)


def test_overlapping_key_replaces_by_coordinates(warehouse):
    """A hand-reset cursor may cut a different key over landed offsets: each offset is still held once."""
    warehouse.warehouse().land(batch_of([OffsetRange(0, 0, 99)]))
    warehouse.warehouse().land(batch_of([OffsetRange(0, 50, 149)], name_suffix=" (v2)"))
    assert counts(warehouse.duckdb_path) == (135, 135, 15)
    with warehouse.duckdb_connection() as con:
        owners = con.execute(
            f"SELECT stream_partition, count(*) FROM {STREAM_TABLE} GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert owners == [("p0:0-99", 45), ("p0:50-149", 90)]


def test_a_failure_mid_landing_leaves_the_previous_state(warehouse, tmp_path):
    first = batch_of([OffsetRange(0, 0, 99)])
    warehouse.warehouse().land(first)
    # Inject a failure after the stream rows are written: a rejects table whose CHECK refuses
    # every row makes the second statement of the transaction fail.
    with warehouse.duckdb_connection() as con:
        con.execute(f"DROP TABLE {REJECTS_TABLE}")
        con.execute(duckdb_ddl(REJECTS_TABLE, REJECT_COLUMNS).replace("\n)", ",\n  CHECK (kafka_offset < 0)\n)"))
    with pytest.raises(duckdb.ConstraintException):
        warehouse.warehouse().land(batch_of([OffsetRange(0, 0, 199)], name_suffix=" (v2)"))
    with warehouse.duckdb_connection() as con:
        assert con.execute(f"SELECT count(*) FROM {STREAM_TABLE}").fetchone()[0] == 90
        assert con.execute(f"SELECT count(*) FROM {STREAM_TABLE} WHERE company_name LIKE '%(v2)'").fetchone()[0] == 0
        con.execute(f"DROP TABLE {REJECTS_TABLE}")
    warehouse.warehouse().land(batch_of([OffsetRange(0, 0, 199)], name_suffix=" (v2)"))
    assert counts(warehouse.duckdb_path) == (180, 180, 20)


def test_duckdb_connection_closes_promptly(warehouse):
    with warehouse.duckdb_connection() as con:
        con.execute("CREATE TABLE t AS SELECT 1 AS x")
    # Closed: another connection (as another process would) can open the file read-only at once.
    with duckdb.connect(warehouse.duckdb_path, read_only=True) as other:
        assert other.execute("SELECT x FROM t").fetchone() == (1,)
