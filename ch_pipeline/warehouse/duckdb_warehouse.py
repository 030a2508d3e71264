"""The DuckDB warehouse (local default): one file, landed in one transaction.

A landing parses its raw Kafka chunks straight into the file (``land_messages``): each chunk is one
``INSERT ... SELECT <parse> FROM <Arrow chunk>`` in the open landing transaction, so memory is bounded
by a chunk and DuckDB's own row-group buffer, never the whole range, and the read of the next chunk
overlaps the parse and write of this one (docs/architecture.md §11).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from ch_pipeline.companies_house.bulk_csv import DATE_FORMAT
from ch_pipeline.warehouse.bulk_cleaning import Dialect, load_cleaned, staging_columns
from ch_pipeline.warehouse.bulk_load import DEFAULT_LIMITS, BulkLimits, Progress
from ch_pipeline.kafka.offsets import OffsetRange
from ch_pipeline.warehouse.landing import (
    LandingBatch,
    LandingSummary,
    TimepointCoverage,
    message_bytes,
    offsets_predicate,
    timepoint_gaps_sql,
    timepoint_range_sql,
)
from ch_pipeline.companies_house.streams import COMPANIES, STREAMS, StreamSpec
from ch_pipeline.warehouse.schema import BULK_TABLE, REJECT_COLUMNS, duckdb_ddl, landing_columns


def parse_query(stream: StreamSpec) -> str:
    """The parse of one raw chunk (table ``raw_messages``) of ``stream``: every message's error (NULL
    for a landing row), its landing-row fields with ``raw_event``, and its reject-row fields."""
    from ch_pipeline.warehouse.envelope_rows import envelope_query
    from ch_pipeline.warehouse.stream_rows import parse_query as companies_query

    return companies_query(raw_event=True) if stream.name == COMPANIES else envelope_query(stream, raw_event=True)


def drop_repeats_sql(table: str) -> str:
    """Delete all but one row of each company that `table` holds more than once, keeping the row the
    cleaning query's window would keep (the greatest name; a blank name, NULL here, sorts last as it
    did there). The window runs over the repeated companies only, so a file without repeats
    costs one hash aggregate of company_number and nothing more."""
    return (
        f"delete from {table} where rowid in (\n"
        f"  select rowid from {table}\n"
        f"  where company_number in (select company_number from {table} group by company_number having count(*) > 1)\n"
        f"  qualify row_number() over (partition by company_number order by company_name desc nulls last) > 1\n)"
    )


# The bulk cleaning query's dialect (bulk_cleaning.cleaning_select).
DUCKDB = Dialect(
    regexp_replace_all=lambda value, pattern, repl: f"regexp_replace({value}, '{pattern}', '{repl}', 'g')",
    parse_dmy_date=lambda value: f"cast(try_strptime({value}, '{DATE_FORMAT}') as date)",
    month_start=lambda value: f"cast(date_trunc('month', {value}) as date)",
    drop_repeats=drop_repeats_sql,
)


@contextmanager
def connect(path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the file read-write and close it when the block ends (one writer process: docs/architecture.md §11)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    try:
        yield con
    finally:
        con.close()


def create_stream_tables(con: duckdb.DuckDBPyConnection, stream: StreamSpec = STREAMS[COMPANIES]) -> None:
    """``stream``'s tables on an open connection (``DuckDBWarehouse.create_stream_tables`` opens one)."""
    con.execute(duckdb_ddl(stream.landing_table, landing_columns(stream)))
    con.execute(duckdb_ddl(stream.rejects_table, REJECT_COLUMNS))


def duckdb_read_csv(path: Path) -> str:
    """DuckDB's CSV reader over the file; columns named from its header (``staging_columns``) and
    all text, so a malformed date becomes NULL in the cleaning step instead of failing the load."""
    names = ", ".join(f"'{name}'" for name in staging_columns(path))
    quoted = str(path).replace("'", "''")
    return (
        f"read_csv('{quoted}', header = true, names = [{names}], all_varchar = true, "
        "quote = '\"', escape = '\"', delim = ',', strict_mode = false)"
    )


def load_duckdb(
    connection, source: str, file_date: date, table: str = BULK_TABLE, progress: Progress = print, limits: BulkLimits = DEFAULT_LIMITS
) -> int:
    """Replace `table` with the cleaned bulk snapshot in one transaction (DuckDB reads the CSV itself);
    returns its row count."""

    def in_one_transaction(statements: list[str]) -> None:
        # DuckDB's DDL is transactional: readers see the old table until the repeats are gone too.
        connection.begin()
        try:
            for sql in statements:
                connection.execute(sql)
            connection.commit()
        except BaseException:
            connection.rollback()
            raise

    load_cleaned(source, file_date, table, DUCKDB, duckdb_read_csv, in_one_transaction, progress, limits)
    [(rows,)] = connection.execute(f"select count(*) from {table}").fetchall()
    progress(f"{table}: {rows:,} companies")
    return rows


def _execute_over(con: duckdb.DuckDBPyConnection, raw: pa.Table, sql: str, params: dict) -> list[tuple]:
    """Run ``sql`` with ``raw`` as the table ``raw_messages``. Registered as a stream of its batches: a
    registered Arrow table stays referenced until the transaction ends (every chunk of a landing
    held in memory at once), a consumed stream of batches does not."""
    con.register("raw_messages", pa.RecordBatchReader.from_batches(raw.schema, iter(raw.to_batches())))
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.unregister("raw_messages")


class DuckDBWarehouse:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def from_config(cls, config) -> "DuckDBWarehouse":
        return cls(Path(config.duckdb_path))

    def create_stream_tables(self, stream: StreamSpec = STREAMS[COMPANIES]) -> None:
        with connect(self.path) as con:
            create_stream_tables(con, stream)

    def load_bulk(self, source: str, file_date: date, progress: Progress = print, limits: BulkLimits | None = None) -> int:
        with connect(self.path) as con:
            return load_duckdb(con, source, file_date, progress=progress, limits=limits or DEFAULT_LIMITS)

    def timepoint_coverage(self, stream: StreamSpec) -> TimepointCoverage:
        with connect(self.path) as con:
            create_stream_tables(con, stream)
            [(first, last)] = con.execute(timepoint_range_sql(stream.landing_table)).fetchall()
            gaps = [tuple(row) for row in con.execute(timepoint_gaps_sql(stream.landing_table)).fetchall()]
        return TimepointCoverage(first, last, gaps)

    def land_messages(
        self, stream_partition: str, ranges: Sequence[OffsetRange], chunks: Iterable[pa.Table], ingested_at: datetime,
        stream: StreamSpec = STREAMS[COMPANIES],
    ) -> LandingSummary:
        """Parse each raw chunk straight into ``stream``'s tables inside one transaction that first
        deletes the rows at ``ranges``: the previous state stays until COMMIT, whatever fails (the
        read included: ``chunks`` is consumed inside the transaction)."""
        predicate = offsets_predicate(ranges)
        query = parse_query(stream)
        params = {"stream_partition": stream_partition, "ingested_at": ingested_at}
        tables = ((stream.landing_table, landing_columns(stream), "IS NULL"), (stream.rejects_table, REJECT_COLUMNS, "IS NOT NULL"))
        inserts = [
            f"INSERT INTO {table} ({names}) SELECT {names} FROM ({query}) WHERE error {test}"
            for table, columns, test in tables
            for names in [", ".join(c.name for c in columns)]
        ]
        counts, total_bytes = [0, 0], 0
        with connect(self.path) as con:
            create_stream_tables(con, stream)
            con.execute("SET TimeZone = 'UTC'")  # the parse's: published_at without an offset is UTC
            con.begin()
            try:
                for table, _, _ in tables:
                    con.execute(f"DELETE FROM {table} WHERE {predicate}")
                for raw in chunks:
                    [(landed,)] = _execute_over(con, raw, inserts[0], params)
                    counts[0] += landed
                    if landed < raw.num_rows:  # some rejects (usually none: one parse per chunk then)
                        [(rejected,)] = _execute_over(con, raw, inserts[1], params)
                        counts[1] += rejected
                    total_bytes += message_bytes(raw)
                [(first, last, newest_row)] = con.execute(
                    f"SELECT min(published_at), max(published_at), max(kafka_timestamp) FROM {stream.landing_table} WHERE {predicate}"
                ).fetchall()
                [(newest_reject,)] = con.execute(f"SELECT max(kafka_timestamp) FROM {stream.rejects_table} WHERE {predicate}").fetchall()
                con.commit()
            except BaseException:
                con.rollback()
                raise
        newest = max((t for t in (newest_row, newest_reject) if t is not None), default=None)
        return LandingSummary(stream_partition, ranges, counts[0], counts[1], total_bytes, first, last, newest, stream)

    def land(self, batch: LandingBatch) -> None:
        predicate = offsets_predicate(batch.ranges)
        with connect(self.path) as con:
            create_stream_tables(con, batch.stream)
            # Arrow tables are scanned in place by DuckDB (no row-by-row inserts); the column
            # lists come from the schema so the table's column order never matters.
            con.register("landing_rows", batch.rows)
            con.register("landing_rejects", batch.rejects)
            con.begin()
            try:
                for table, columns, source in (
                    (batch.stream.landing_table, landing_columns(batch.stream), "landing_rows"),
                    (batch.stream.rejects_table, REJECT_COLUMNS, "landing_rejects"),
                ):
                    names = ", ".join(c.name for c in columns)
                    con.execute(f"DELETE FROM {table} WHERE {predicate}")
                    con.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {source}")
                con.commit()
            except BaseException:
                con.rollback()
                raise
