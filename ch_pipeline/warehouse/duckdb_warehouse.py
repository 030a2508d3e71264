"""The DuckDB warehouse (local default): one file, landed in one transaction.

A landing parses its raw Kafka chunks straight into the file (``land_messages``): one
``INSERT ... SELECT <parse> FROM <Arrow stream of the chunks>`` in the open landing transaction, so
memory is bounded by a chunk and DuckDB's own row-group buffer, never the whole range, and the read of
the next chunk overlaps the parse and write of this one (docs/architecture.md §11).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


# A landing's rows go to the file every this many rows (a DuckDB row group; the default is 122,880).
LANDING_ROW_GROUP_ROWS = 16_384


@contextmanager
def connect_for_landing(path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """The file opened for one landing, in a DuckDB instance of its own set up for it:

    - Rows written out every ``LANDING_ROW_GROUP_ROWS``: DuckDB keeps a transaction's new rows in
      memory until five whole row groups (``write_buffer_row_group_count``) of 122,880 rows are full,
      so a landing of 100k messages held them all until its commit (peak RSS ~360 MiB; ~285 MiB with
      16,384-row groups flushed one at a time, and as fast). Row groups of that size cost ~1/5 more
      file than 122,880-row ones for large landings; small landings are smaller than either.
      ``ROW_GROUP_SIZE`` is an ``ATTACH`` option only, hence the in-memory instance that attaches
      the file; it must be the process's only holder of the file (DuckDB refuses a second instance).
    - One thread: a landing's source is one stream of batches; a second thread only buffered a
      second batch (~+30 MiB peak) and took the core the Kafka read needs.

    docs/architecture.md §11 has the measurements.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(":memory:", config={"threads": 1, "write_buffer_row_group_count": 1})
    try:
        quoted = str(path).replace("'", "''")
        con.execute(f"ATTACH '{quoted}' AS warehouse (ROW_GROUP_SIZE {LANDING_ROW_GROUP_ROWS})")
        con.execute("USE warehouse")
        con.execute(f"SET temp_directory = '{quoted}.tmp'")  # where duckdb.connect(path) would spill
        yield con
    finally:
        con.close()


class _RawStream:
    """A landing's raw chunks as one Arrow stream, so one statement parses them all (planning the
    parse costs about as much as parsing 2,000 messages: once per landing, not once per chunk). It
    counts what it hands over, and keeps the read's own error: DuckDB reports it as its own."""

    def __init__(self, chunks: Iterable[pa.Table]) -> None:
        self._chunks = chunks
        self.messages = 0
        self.bytes = 0
        self.error: BaseException | None = None

    def reader(self) -> pa.RecordBatchReader:
        from ch_pipeline.warehouse.stream_rows import RAW_SCHEMA

        # A stream, not a table: a registered table stays referenced until the transaction ends.
        return pa.RecordBatchReader.from_batches(RAW_SCHEMA, self._batches())

    def _batches(self) -> Iterator[pa.RecordBatch]:
        try:
            for raw in self._chunks:
                self.messages += raw.num_rows
                self.bytes += message_bytes(raw)
                yield from raw.to_batches()
        except BaseException as exc:
            self.error = exc
            raise


class _RejectStash:
    """The reject rows of the landing statement, set aside as it runs: an INSERT writes one table, so
    the parse's rejects leave it through this filter function (``stash``), which DuckDB calls with the
    reject-row columns of the rows whose ``error`` is set. It answers false: it keeps them out of the
    landing table, and nothing else."""

    def __init__(self) -> None:
        self._tables: list[pa.Table] = []
        self.rows = 0

    def stash(self, kafka_partition, kafka_offset, kafka_timestamp, kafka_key, raw_value_base64, error, stream_partition, ingested_at):
        """Arrow arrays of ``REJECT_COLUMNS``, in order (DuckDB takes the parameter count from the signature)."""
        columns = [kafka_partition, kafka_offset, kafka_timestamp, kafka_key, raw_value_base64, error, stream_partition, ingested_at]
        batch = pa.table(columns, names=_REJECT_NAMES)
        rejects = batch.filter(pc.is_valid(batch.column("error")))  # the filter may hand over landing rows too
        if rejects.num_rows:
            self._tables.append(rejects)
            self.rows += rejects.num_rows
        return pa.array(np.zeros(batch.num_rows, np.bool_))

    def table(self) -> pa.Table:
        return pa.concat_tables(self._tables)


_REJECT_NAMES = [c.name for c in REJECT_COLUMNS]
_REJECT_COLUMN_LIST = ", ".join(_REJECT_NAMES)
_STASH_FUNCTION = "stash_reject"


def _landing_insert(stream: StreamSpec) -> str:
    """One statement for a whole landing: every parsed message whose ``error`` is NULL into the
    landing table, the others through ``_RejectStash`` (OR evaluates it for those rows only)."""
    names = ", ".join(c.name for c in landing_columns(stream))
    return (
        f"INSERT INTO {stream.landing_table} ({names}) SELECT {names} FROM ({parse_query(stream)})\n"
        f"WHERE error IS NULL OR {_STASH_FUNCTION}({_REJECT_COLUMN_LIST})"
    )


def _register_stash(con: duckdb.DuckDBPyConnection, stash: _RejectStash) -> None:
    types = [duckdb.sqltype(c.duckdb_type) for c in REJECT_COLUMNS]
    # side_effects: DuckDB must call it for every row it filters, never fold or skip it.
    con.create_function(
        _STASH_FUNCTION, stash.stash, types, duckdb.sqltype("BOOLEAN"), type="arrow", null_handling="special", side_effects=True
    )


def _execute_reading(con: duckdb.DuckDBPyConnection, raw: _RawStream, sql: str, params: dict) -> list[tuple]:
    """Run ``sql`` with ``raw`` as the table ``raw_messages``; a failed read raises its own error."""
    con.register("raw_messages", raw.reader())
    try:
        result = con.execute(sql, params).fetchall()
    except duckdb.Error:
        if raw.error is not None:
            raise raw.error
        raise
    # Not on failure: an aborted transaction refuses it, and closing the connection drops the view.
    con.unregister("raw_messages")
    return result


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
        params = {"stream_partition": stream_partition, "ingested_at": ingested_at}
        raw, stash = _RawStream(chunks), _RejectStash()
        with connect_for_landing(self.path) as con:
            create_stream_tables(con, stream)
            con.execute("SET TimeZone = 'UTC'")  # the parse's: published_at without an offset is UTC
            _register_stash(con, stash)
            con.begin()
            try:
                for table in (stream.landing_table, stream.rejects_table):
                    con.execute(f"DELETE FROM {table} WHERE {predicate}")
                [(rows,)] = _execute_reading(con, raw, _landing_insert(stream), params)
                if stash.rows:
                    con.register("landing_rejects", stash.table())
                    con.execute(f"INSERT INTO {stream.rejects_table} ({_REJECT_COLUMN_LIST}) SELECT {_REJECT_COLUMN_LIST} FROM landing_rejects")
                    con.unregister("landing_rejects")
                if rows + stash.rows != raw.messages:  # every message in exactly one table, or nothing lands
                    raise RuntimeError(f"{stream_partition}: {raw.messages} messages read, {rows} rows + {stash.rows} rejects parsed")
                [(first, last, newest_row)] = con.execute(
                    f"SELECT min(published_at), max(published_at), max(kafka_timestamp) FROM {stream.landing_table} WHERE {predicate}"
                ).fetchall()
                [(newest_reject,)] = con.execute(f"SELECT max(kafka_timestamp) FROM {stream.rejects_table} WHERE {predicate}").fetchall()
                con.commit()
            except BaseException:
                con.rollback()
                raise
        newest = max((t for t in (newest_row, newest_reject) if t is not None), default=None)
        return LandingSummary(stream_partition, ranges, rows, stash.rows, raw.bytes, first, last, newest, stream)

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
