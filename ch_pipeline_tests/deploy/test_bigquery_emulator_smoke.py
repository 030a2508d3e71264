"""The offline BigQuery harness works, and refuses what deploy/bigquery-emulator.md says it refuses.

These pin the facts the BigQuery landing and the dbt models rely on offline: dataset and table
lifecycle, CSV loads with NULLs and quoting, multi-statement scripts, and a MERGE that replaces one
partition's rows idempotently.
"""

from __future__ import annotations

import io
from datetime import UTC, date, datetime

import pytest
from google.api_core import exceptions as gexc
from google.cloud import bigquery


SCHEMA = [
    bigquery.SchemaField("company_number", "STRING"),
    bigquery.SchemaField("company_name", "STRING"),
    bigquery.SchemaField("date_of_creation", "DATE"),
    bigquery.SchemaField("published_at", "TIMESTAMP"),
    bigquery.SchemaField("kafka_offset", "INT64"),
    bigquery.SchemaField("stream_partition", "STRING"),
]
COLUMNS = ", ".join(f.name for f in SCHEMA)

# Quoting, an embedded comma and quote, NULL (unquoted empty) vs '' (quoted empty), UTF-8, and the
# UTC timestamp spelling both BigQuery and the emulator read.
CSV = (
    "company_number,company_name,date_of_creation,published_at,kafka_offset,stream_partition\n"
    '00000001,"ACME, LTD",2020-01-02,2024-05-01 10:00:00.123456,0,p0\n'
    '00000002,"SAY ""HI"" LIMITED",,2024-05-01 10:00:01,1,p0\n'
    '00000003,"",2019-12-31,,2,p1\n'
    "00000004,,2018-06-30,2024-05-01 10:00:03.500000 UTC,3,p1\n"
    '00000005,"CAFÉ £ LTD",2021-03-04,2024-05-01 10:00:04,4,p1\n'
)


def load_csv(client: bigquery.Client, table: str, data: str, disposition: str = "WRITE_APPEND") -> int:
    config = bigquery.LoadJobConfig(
        source_format=bigquery.SourceFormat.CSV, skip_leading_rows=1, schema=SCHEMA, write_disposition=disposition
    )
    job = client.load_table_from_file(io.BytesIO(data.encode()), table, job_config=config)
    job.result()
    return job.output_rows


def rows(client: bigquery.Client, sql: str) -> list[tuple]:
    return [tuple(row.values()) for row in client.query(sql).result()]


@pytest.fixture
def client(bigquery_emulator):
    bq = bigquery_emulator.client()
    yield bq
    bq.close()


def test_dataset_table_and_csv_load_round_trip(client, bigquery_dataset):
    table = f"{client.project}.{bigquery_dataset}.staging"
    client.create_table(bigquery.Table(table, schema=SCHEMA))
    assert [t.table_id for t in client.list_tables(bigquery_dataset)] == ["staging"]

    assert load_csv(client, table, CSV) == 5

    got = rows(client, f"SELECT {COLUMNS} FROM `{table}` ORDER BY kafka_offset")
    assert got[0] == ("00000001", "ACME, LTD", date(2020, 1, 2), datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC), 0, "p0")
    assert got[1][1] == 'SAY "HI" LIMITED' and got[1][2] is None
    assert got[2][1] == "" and got[2][3] is None  # quoted empty is '', unquoted empty is NULL
    assert got[3][1] is None and got[3][3] == datetime(2024, 5, 1, 10, 0, 3, 500000, tzinfo=UTC)
    assert got[4][1] == "CAFÉ £ LTD"
    assert client.get_table(table).num_rows == 5


def test_write_truncate_replaces_the_table(client, bigquery_dataset):
    table = f"{client.project}.{bigquery_dataset}.staging"
    load_csv(client, table, CSV, "WRITE_TRUNCATE")
    load_csv(client, table, CSV, "WRITE_TRUNCATE")
    assert rows(client, f"SELECT count(*) FROM `{table}`") == [(5,)]


def test_script_replaces_one_partition_idempotently(client, bigquery_dataset):
    """DDL + CSV staging + one MERGE ... ON FALSE: the partition-replace that needs no DELETE or transaction."""
    ds = bigquery_dataset
    staging = f"{client.project}.{ds}.staging"
    load_csv(client, staging, CSV, "WRITE_TRUNCATE")
    replace_p1 = f"""
        CREATE TABLE IF NOT EXISTS `{ds}.stream` (
          company_number STRING, company_name STRING, date_of_creation DATE,
          published_at TIMESTAMP, kafka_offset INT64, stream_partition STRING NOT NULL);
        MERGE `{ds}.stream` AS t
        USING (SELECT {COLUMNS} FROM `{ds}.staging` WHERE stream_partition = 'p1') AS s
        ON FALSE
        WHEN NOT MATCHED BY SOURCE AND t.stream_partition = 'p1' THEN DELETE
        WHEN NOT MATCHED THEN INSERT ({COLUMNS}) VALUES ({", ".join("s." + f.name for f in SCHEMA)});
        SELECT stream_partition, count(*) AS n FROM `{ds}.stream` GROUP BY stream_partition
    """
    for _ in range(3):
        assert sorted(rows(client, replace_p1)) == [("p1", 3)]
    client.query(
        f"INSERT INTO `{ds}.stream` ({COLUMNS}) SELECT {COLUMNS} FROM `{ds}.staging` WHERE stream_partition = 'p0'"
    ).result()
    # Replacing p1 again leaves p0 alone.
    assert sorted(rows(client, replace_p1)) == [("p0", 2), ("p1", 3)]


def test_merge_upserts_by_key(client, bigquery_dataset):
    ds = bigquery_dataset
    load_csv(client, f"{client.project}.{ds}.staging", CSV, "WRITE_TRUNCATE")
    client.query(f"CREATE TABLE `{ds}.core` AS SELECT company_number, company_name FROM `{ds}.staging` WHERE kafka_offset < 2").result()
    client.query(
        f"""MERGE `{ds}.core` AS t
        USING (SELECT company_number, CONCAT('NEW ', COALESCE(company_name, '?')) AS company_name FROM `{ds}.staging`) AS s
        ON t.company_number = s.company_number
        WHEN MATCHED THEN UPDATE SET company_name = s.company_name
        WHEN NOT MATCHED THEN INSERT (company_number, company_name) VALUES (s.company_number, s.company_name)"""
    ).result()
    got = dict(rows(client, f"SELECT company_number, company_name FROM `{ds}.core`"))
    assert len(got) == 5
    assert got["00000001"] == "NEW ACME, LTD" and got["00000004"] == "NEW ?"


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM `{ds}.staging` WHERE TRUE",
        "UPDATE `{ds}.staging` SET company_name = 'x' WHERE TRUE",
        "BEGIN TRANSACTION; INSERT INTO `{ds}.staging` (company_number) VALUES ('x'); COMMIT TRANSACTION;",
    ],
    ids=["delete", "update", "transaction"],
)
def test_documented_refusals_still_hold(client, bigquery_dataset, statement):
    """deploy/bigquery-emulator.md says these are refused; if a new emulator accepts them, update the notes."""
    load_csv(client, f"{client.project}.{bigquery_dataset}.staging", CSV, "WRITE_TRUNCATE")
    with pytest.raises(gexc.BadRequest, match="Not supported by Crucible"):
        client.query(statement.format(ds=bigquery_dataset)).result()
    assert rows(client, f"SELECT count(*) FROM `{bigquery_dataset}.staging`") == [(5,)]


def test_streaming_inserts_are_not_served(client, bigquery_dataset):
    table = f"{client.project}.{bigquery_dataset}.staging"
    client.create_table(bigquery.Table(table, schema=SCHEMA))
    with pytest.raises(gexc.GoogleAPICallError):
        client.insert_rows_json(table, [{"company_number": "x"}])
