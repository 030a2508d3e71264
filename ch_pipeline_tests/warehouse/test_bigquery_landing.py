"""BigQuery landing: the exact SQL and load-job configuration, and a real landing on the offline emulator."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import duckdb
import pyarrow as pa

from ch_pipeline.companies_house.stream_events import generate_stream_events
from ch_pipeline.companies_house.streams import STREAM_NAMES, stream
from ch_pipeline.defs.resources import WarehouseResource
from ch_pipeline.kafka.offsets import OffsetRange, format_partition_key, parse_partition_key
from ch_pipeline.warehouse.bigquery_warehouse import (
    has_line_breaks,
    landing_script,
    load_job_config,
    replace_statement,
    staging_table_name,
    to_csv,
)
from ch_pipeline.warehouse.envelope_rows import envelope_parser
from ch_pipeline.warehouse.landing import LandingBatch, TimepointCoverage
from ch_pipeline.warehouse.schema import REJECT_COLUMNS, STREAM_COLUMNS, STREAM_TABLE, arrow_schema, landing_columns
from ch_pipeline.warehouse.stream_rows import StreamBatchBuilder
from ch_pipeline_tests.warehouse.messages import corpus
from ch_pipeline_tests.support.kafka import FakeMessage

RANGES = [OffsetRange(0, 10, 19), OffsetRange(1, 0, 4)]


def test_replace_statement_is_one_merge_on_the_batch_offsets():
    sql = replace_statement("proj.ds", "company_house_stream_rejects", "staging_x", REJECT_COLUMNS, RANGES)
    names = ", ".join(c.name for c in REJECT_COLUMNS)
    assert sql == (
        "MERGE `proj.ds.company_house_stream_rejects` AS target\n"
        "USING `proj.ds.staging_x` AS source\n"
        "ON FALSE\n"
        "WHEN NOT MATCHED BY SOURCE AND ((target.kafka_partition = 0 AND target.kafka_offset BETWEEN 10 AND 19)"
        " OR (target.kafka_partition = 1 AND target.kafka_offset BETWEEN 0 AND 4)) THEN DELETE\n"
        f"WHEN NOT MATCHED THEN INSERT ({names}) VALUES ({', '.join('source.' + c.name for c in REJECT_COLUMNS)})"
    )
    script = landing_script("proj.ds", {"company_house_stream": "s1", "company_house_stream_rejects": "s2"}, RANGES)
    statements = [s for s in script.split(";\n")]
    assert len(statements) == 2 and statements[0].startswith("MERGE `proj.ds.company_house_stream_rejects`")
    assert statements[1].startswith("MERGE `proj.ds.company_house_stream` AS target\nUSING `proj.ds.s1`")


def test_load_job_is_csv_into_a_truncated_all_nullable_staging_table():
    config = load_job_config(STREAM_COLUMNS)
    assert config.source_format == "CSV" and config.skip_leading_rows == 1
    assert config.write_disposition == "WRITE_TRUNCATE"
    assert [(f.name, f.field_type, f.mode) for f in config.schema] == [(c.name, c.bigquery_type, "NULLABLE") for c in STREAM_COLUMNS]
    assert config.allow_quoted_newlines is None
    assert load_job_config(STREAM_COLUMNS, quoted_newlines=True).allow_quoted_newlines is True
    key = format_partition_key(RANGES)
    assert staging_table_name(STREAM_TABLE, key) == staging_table_name(STREAM_TABLE, key) != staging_table_name(STREAM_TABLE, "p0:0-1")


def built_batch(messages, ranges) -> LandingBatch:
    key = format_partition_key(ranges)
    builder = StreamBatchBuilder(key, datetime(2024, 6, 1, 12, 0, 0, 123456, tzinfo=timezone.utc))
    builder.add(FakeMessage(m.partition, offset, m.value, m.key) for offset, m in enumerate(messages))
    return LandingBatch(key, ranges, builder.stream_table(), builder.rejects_table())


def test_csv_round_trips_every_value_and_flags_line_breaks(tmp_path):
    messages = [m for m in corpus(400, partitions=1, malformed=20, flat=20, duplicates=5)]
    batch = built_batch(messages, [OffsetRange(0, 0, 399)])
    text = to_csv(batch.rows).decode()
    assert "+00:00" not in text and '"2024-06-01' not in text  # unquoted UTC timestamps without an offset
    csv_file = tmp_path / "rows.csv"
    csv_file.write_text(text)
    types = ", ".join(f"'{c.name}': '{c.duckdb_type.replace('TIMESTAMPTZ', 'TIMESTAMP')}'" for c in STREAM_COLUMNS)
    with duckdb.connect() as con:
        back = con.sql(f"SELECT * FROM read_csv('{csv_file}', header = true, allow_quoted_nulls = false, columns = {{{types}}})").arrow().read_all()
    expected = batch.rows.cast(pa.schema([f.with_type(pa.timestamp("us")) if pa.types.is_timestamp(f.type) else f for f in batch.rows.schema]))
    assert back.to_pylist() == expected.to_pylist()
    assert not has_line_breaks(batch.rows)
    assert has_line_breaks(pa.table({"company_name": ["A\nB"]}))


def test_landing_on_the_bigquery_emulator_is_idempotent(bigquery_emulator, bigquery_dataset, tmp_path):
    messages = corpus(600, partitions=1, malformed=15, flat=15, duplicates=5)
    ranges = [OffsetRange(0, 0, 599)]
    batch = built_batch(messages, ranges)
    resource = WarehouseResource(
        kind="bigquery",
        gcp_project=bigquery_emulator.project,
        bigquery_dataset=bigquery_dataset,
        bigquery_api_endpoint=bigquery_emulator.endpoint,
    )
    resource.warehouse().land(batch)
    resource.warehouse().land(batch)  # a rerun replaces, never duplicates
    local = WarehouseResource(duckdb_path=str(tmp_path / "w.duckdb"))
    local.warehouse().land(batch)

    client = resource.bigquery_client()
    query = "SELECT company_number, company_name, date_of_creation, published_at, event_type, kafka_offset FROM {} ORDER BY kafka_offset"
    remote = [tuple(r.values()) for r in client.query(query.format(f"`{bigquery_dataset}.company_house_stream`")).result()]
    rejects = [tuple(r.values()) for r in client.query(f"SELECT kafka_offset FROM `{bigquery_dataset}.company_house_stream_rejects` ORDER BY 1").result()]
    tables = sorted(t.table_id for t in client.list_tables(bigquery_dataset))
    with local.duckdb_connection() as con:
        con.execute("SET TimeZone = 'UTC'")
        expected = con.execute(query.format("company_house_stream")).fetchall()
    assert len(remote) == 585 and remote == expected
    assert [r[0] for r in rejects] == [o for o, m in enumerate(messages) if not m.valid]
    assert tables == ["company_house_stream", "company_house_stream_rejects"]  # staging tables dropped
    assert json.loads(batch.rows.column("raw_event")[0].as_py())


def test_a_stream_other_than_companies_lands_in_its_own_tables_on_the_bigquery_emulator(
    bigquery_emulator, bigquery_dataset, tmp_path
):
    """PSCs: JSON lists (natures_of_control) and names with commas go through the CSV load unchanged,
    and BigQuery holds what DuckDB holds for the same batch; both see the same timepoint gap."""
    spec = stream("persons-with-significant-control")
    events = [e for e in generate_stream_events(spec.name, 300, seed=9) if not 100 <= e["event"]["timepoint"] <= 102]
    values = [json.dumps(event).encode() for event in events] + [b"{oops", b"[]"]
    key = format_partition_key([OffsetRange(0, 0, len(values) - 1)])
    builder = StreamBatchBuilder(key, datetime(2024, 6, 1, 12, tzinfo=timezone.utc), envelope_parser(spec),
                                 arrow_schema(landing_columns(spec)))  # fmt: skip
    builder.add(FakeMessage(0, offset, value, b"k") for offset, value in enumerate(values))
    batch = LandingBatch(key, parse_partition_key(key), builder.stream_table(), builder.rejects_table(), stream=spec)
    resource = WarehouseResource(
        kind="bigquery", gcp_project=bigquery_emulator.project, bigquery_dataset=bigquery_dataset,
        bigquery_api_endpoint=bigquery_emulator.endpoint,
    )  # fmt: skip
    resource.warehouse().land(batch)
    resource.warehouse().land(batch)  # a rerun replaces, never duplicates
    local = WarehouseResource(duckdb_path=str(tmp_path / "w.duckdb"))
    local.warehouse().land(batch)

    names = ", ".join(c.name for c in landing_columns(spec) if c.name not in ("raw_event", "ingested_at", "kafka_timestamp"))
    query = f"SELECT {names} FROM {{}} ORDER BY kafka_offset"
    client = resource.bigquery_client()
    remote = [tuple(r.values()) for r in client.query(query.format(f"`{bigquery_dataset}.{spec.landing_table}`")).result()]
    rejects = [r[0] for r in client.query(f"SELECT kafka_offset FROM `{bigquery_dataset}.{spec.rejects_table}` ORDER BY 1").result()]
    with local.duckdb_connection() as con:
        con.execute("SET TimeZone = 'UTC'")
        expected = con.execute(query.format(spec.landing_table)).fetchall()
    assert len(remote) == len(events) and remote == expected
    assert any(row[names.split(", ").index("natures_of_control")].startswith("[") for row in remote)
    assert rejects == [len(events), len(events) + 1]
    assert sorted(t.table_id for t in client.list_tables(bigquery_dataset)) == sorted([spec.landing_table, spec.rejects_table])
    coverage = resource.warehouse().timepoint_coverage(spec)
    assert coverage == local.warehouse().timepoint_coverage(spec) == TimepointCoverage(1, 300, [(100, 102)])


def test_every_streams_tables_are_created_and_landed_on_the_bigquery_emulator(bigquery_emulator, bigquery_dataset):
    """The DDL and MERGE of each stream's columns (filings has columns named ``type`` and ``date``)."""
    resource = WarehouseResource(
        kind="bigquery", gcp_project=bigquery_emulator.project, bigquery_dataset=bigquery_dataset,
        bigquery_api_endpoint=bigquery_emulator.endpoint,
    )  # fmt: skip
    client = resource.bigquery_client()
    for name in STREAM_NAMES:
        if name == "companies":
            continue
        spec = stream(name)
        values = [json.dumps(event).encode() for event in generate_stream_events(name, 20, seed=3)]
        key = format_partition_key([OffsetRange(0, 0, len(values) - 1)])
        builder = StreamBatchBuilder(key, datetime(2024, 6, 1, tzinfo=timezone.utc), envelope_parser(spec),
                                     arrow_schema(landing_columns(spec)))  # fmt: skip
        builder.add(FakeMessage(0, offset, value) for offset, value in enumerate(values))
        batch = LandingBatch(key, parse_partition_key(key), builder.stream_table(), builder.rejects_table(), stream=spec)
        resource.warehouse().land(batch)
        table = client.get_table(f"{bigquery_dataset}.{spec.landing_table}")
        assert [f.name for f in table.schema] == [c.name for c in landing_columns(spec)], name
        assert table.num_rows == len(values) == batch.rows.num_rows, name
