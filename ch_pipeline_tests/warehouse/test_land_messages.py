"""``Warehouse.land_messages``: raw Kafka chunks parsed straight into DuckDB inside the landing transaction.

Held against the in-memory path (``parse_batch`` + ``land``, what BigQuery still does): the same rows
and rejects, the exact message bytes as ``raw_event``, replacement by coordinates, and a read that
fails half-way leaving the previous state. ``read_ahead`` is the thread that overlaps the Kafka read.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone

import duckdb
import pytest

from ch_pipeline.companies_house.stream_events import generate_stream_events
from ch_pipeline.companies_house.streams import COMPANIES, STREAM_NAMES, STREAMS, stream
from ch_pipeline.kafka.offsets import OffsetRange, format_partition_key
from ch_pipeline.landing import read_ahead
from ch_pipeline.warehouse.duckdb_warehouse import LANDING_ROW_GROUP_ROWS, DuckDBWarehouse
from ch_pipeline.warehouse.landing import LandingSummary, parse_batch
from ch_pipeline.warehouse.schema import REJECT_COLUMNS, landing_columns
from ch_pipeline.warehouse.stream_rows import raw_messages_table
from ch_pipeline_tests.support.kafka import FakeMessage
from ch_pipeline_tests.warehouse.messages import corpus

INGESTED = datetime(2024, 6, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)


def raw_chunks(messages, chunk: int = 97):
    """FakeMessages -> raw Arrow chunks, as ``landing.raw_chunks`` makes them from a Kafka read."""
    return [raw_messages_table(messages[i : i + chunk]) for i in range(0, len(messages), chunk)]


def corpus_messages(total: int = 600, name_suffix: str = "") -> tuple[list[FakeMessage], list[OffsetRange]]:
    messages = corpus(total, partitions=2, malformed=30, flat=30, duplicates=10)
    fakes, next_offset = [], {0: 0, 1: 0}
    for m in messages:
        value = m.value
        if name_suffix and value is not None and m.valid:
            value = value.replace(b'"company_name": "', f'"company_name": "{name_suffix}'.encode(), 1)
        fakes.append(FakeMessage(m.partition, next_offset[m.partition], value, m.key))
        next_offset[m.partition] += 1
    return fakes, [OffsetRange(p, 0, end - 1) for p, end in next_offset.items() if end]


def table_rows(path, table: str, columns) -> list[tuple]:
    names = ", ".join(c.name for c in columns)
    with duckdb.connect(str(path), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(f"SELECT {names} FROM {table} ORDER BY kafka_partition, kafka_offset").fetchall()


def landed(path, spec) -> tuple[list[tuple], list[tuple]]:
    return table_rows(path, spec.landing_table, landing_columns(spec)), table_rows(path, spec.rejects_table, REJECT_COLUMNS)


def test_parsed_into_the_file_equals_the_in_memory_path(tmp_path):
    messages, ranges = corpus_messages()
    key = format_partition_key(ranges)
    streamed = DuckDBWarehouse(tmp_path / "streamed.duckdb")
    summary = streamed.land_messages(key, ranges, iter(raw_chunks(messages)), INGESTED)
    batch = parse_batch(key, ranges, raw_chunks(messages), INGESTED)
    DuckDBWarehouse(tmp_path / "batch.duckdb").land(batch)

    rows, rejects = landed(tmp_path / "streamed.duckdb", STREAMS[COMPANIES])
    assert (rows, rejects) == landed(tmp_path / "batch.duckdb", STREAMS[COMPANIES])
    assert len(rows) == batch.rows.num_rows > 0 and len(rejects) == batch.rejects.num_rows > 0
    assert len(rows) + len(rejects) == len(messages)
    assert summary == LandingSummary.of_batch(batch)
    # raw_event is the message value, byte for byte.
    values = {(m.partition(), m.offset()): m.value() for m in messages}
    names = [c.name for c in landing_columns(STREAMS[COMPANIES])]
    at = {name: names.index(name) for name in ("raw_event", "kafka_partition", "kafka_offset")}
    for row in rows:
        assert row[at["raw_event"]].encode() == values[(row[at["kafka_partition"]], row[at["kafka_offset"]])]


@pytest.mark.parametrize("name", [n for n in STREAM_NAMES if n != COMPANIES][:3])
def test_other_streams_parsed_into_the_file_equal_the_in_memory_path(tmp_path, name):
    spec = stream(name)
    events = generate_stream_events(name, 120, seed=3)
    messages = [FakeMessage(0, offset, json.dumps(event).encode(), None) for offset, event in enumerate(events)]
    messages += [FakeMessage(0, len(messages), b"not json"), FakeMessage(0, len(messages) + 1, None)]
    ranges = [OffsetRange(0, 0, len(messages) - 1)]
    key = format_partition_key(ranges)
    summary = DuckDBWarehouse(tmp_path / "streamed.duckdb").land_messages(key, ranges, raw_chunks(messages, 50), INGESTED, spec)
    batch = parse_batch(key, ranges, raw_chunks(messages, 50), INGESTED, spec)
    DuckDBWarehouse(tmp_path / "batch.duckdb").land(batch)
    assert landed(tmp_path / "streamed.duckdb", spec) == landed(tmp_path / "batch.duckdb", spec)
    assert summary == LandingSummary.of_batch(batch) and summary.rejects == 2


def test_rejects_spanning_many_vectors_and_chunks_all_land_once(tmp_path):
    """The rejects leave the landing statement through a filter function, called per DuckDB vector
    (2,048 rows): thousands of rejects, between and within chunks, each land exactly once."""
    values = [b"not json", None, b"[1]", b'{"event": {"type": "changed"}}', json.dumps({"event": {}}).encode()]
    messages = [FakeMessage(i % 2, i // 2, values[i % 5] if i % 1000 else None, None if i % 3 else b"k") for i in range(9000)]
    ranges = [OffsetRange(p, 0, 4499) for p in (0, 1)]
    key = format_partition_key(ranges)
    summary = DuckDBWarehouse(tmp_path / "streamed.duckdb").land_messages(key, ranges, raw_chunks(messages, 3000), INGESTED)
    batch = parse_batch(key, ranges, raw_chunks(messages, 3000), INGESTED)
    DuckDBWarehouse(tmp_path / "batch.duckdb").land(batch)
    rows, rejects = landed(tmp_path / "streamed.duckdb", STREAMS[COMPANIES])
    assert (rows, rejects) == landed(tmp_path / "batch.duckdb", STREAMS[COMPANIES])
    assert (summary.rows, summary.rejects) == (0, 9000) and len({(r[0], r[1]) for r in rejects}) == 9000


def test_a_landing_writes_its_rows_out_a_row_group_at_a_time(tmp_path):
    """What bounds a landing's memory: its rows go to the file every LANDING_ROW_GROUP_ROWS rows, not
    once five 122,880-row groups are full (DuckDB's default: a 100k-message landing held all its rows)."""
    messages, ranges = corpus_messages(total=2 * LANDING_ROW_GROUP_ROWS + 1000)
    summary = DuckDBWarehouse(tmp_path / "w.duckdb").land_messages(format_partition_key(ranges), ranges, raw_chunks(messages, 5000), INGESTED)
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        sizes = con.execute(
            "SELECT max(count) FROM pragma_storage_info('company_house_stream') WHERE column_name = 'kafka_offset' GROUP BY row_group_id"
        ).fetchall()
    assert sum(size for (size,) in sizes) == summary.rows > 2 * LANDING_ROW_GROUP_ROWS
    assert len(sizes) >= 3 and max(size for (size,) in sizes) <= LANDING_ROW_GROUP_ROWS


def test_a_landing_refuses_while_the_process_has_the_file_open_elsewhere(tmp_path):
    """The landing's DuckDB instance must be the process's only holder of the file (DuckDB refuses a
    second instance, as it refuses a second writer process): a clear error, nothing landed."""
    messages, ranges = corpus_messages()
    with duckdb.connect(str(tmp_path / "w.duckdb")) as other:
        with pytest.raises(duckdb.Error, match="already attached"):
            DuckDBWarehouse(tmp_path / "w.duckdb").land_messages(format_partition_key(ranges), ranges, raw_chunks(messages), INGESTED)
        assert other.execute("SELECT count(*) FROM information_schema.tables").fetchone() == (0,)


def landed_once(tmp_path):
    """A warehouse with the corpus landed: (warehouse, its messages, their ranges and key, the rows)."""
    warehouse = DuckDBWarehouse(tmp_path / "w.duckdb")
    messages, ranges = corpus_messages()
    key = format_partition_key(ranges)
    warehouse.land_messages(key, ranges, raw_chunks(messages), INGESTED)
    return warehouse, messages, ranges, key, landed(tmp_path / "w.duckdb", STREAMS[COMPANIES])


def test_landing_again_replaces_by_coordinates(tmp_path):
    warehouse, messages, ranges, key, first = landed_once(tmp_path)
    warehouse.land_messages(key, ranges, raw_chunks(messages), INGESTED)
    assert landed(tmp_path / "w.duckdb", STREAMS[COMPANIES]) == first


def test_a_read_failing_mid_landing_leaves_the_previous_state(tmp_path):
    warehouse, _, ranges, key, before = landed_once(tmp_path)

    changed, _ = corpus_messages(name_suffix="V2 ")

    def failing_read():
        chunks = raw_chunks(changed)
        yield from chunks[:3]  # written into the open transaction
        raise ConnectionError("Kafka went away")

    with pytest.raises(ConnectionError):
        warehouse.land_messages(key, ranges, failing_read(), INGESTED)
    assert landed(tmp_path / "w.duckdb", STREAMS[COMPANIES]) == before


def test_read_ahead_is_bounded_raises_the_read_error_and_stops_the_read():
    produced, closed = [], threading.Event()

    def source():
        try:
            for i in range(100):
                produced.append(i)
                yield i
        finally:
            closed.set()

    with read_ahead(source(), depth=2) as items:
        assert next(items) == 0
        time.sleep(0.3)
        assert len(produced) <= 4  # one taken, two queued, one waiting to be queued
    assert closed.wait(5)
    assert len(produced) < 100

    def failing():
        yield 1
        raise ConnectionError("broker gone")

    with read_ahead(failing()) as items:
        assert next(items) == 1
        with pytest.raises(ConnectionError, match="broker gone"):
            next(items)

    with read_ahead(iter(range(5))) as items:
        assert list(items) == [0, 1, 2, 3, 4]


def test_raw_event_is_stored_zstd_compressed(tmp_path):
    """The raw JSON compresses ~3x smaller with zstd than with DuckDB's default string compression, and
    writes faster (docs/architecture.md §11); the bytes read back unchanged (the other tests)."""
    messages, ranges = corpus_messages()
    DuckDBWarehouse(tmp_path / "w.duckdb").land_messages(format_partition_key(ranges), ranges, raw_chunks(messages), INGESTED)
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        compressions = {
            row[0]
            for row in con.execute(
                f"SELECT compression FROM pragma_storage_info('{STREAMS[COMPANIES].landing_table}') "
                "WHERE column_name = 'raw_event' AND segment_type = 'VARCHAR'"
            ).fetchall()
        }
    assert compressions == {"ZSTD"}
