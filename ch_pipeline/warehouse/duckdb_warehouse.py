"""The DuckDB warehouse (local default): one file, landed from Arrow in one transaction."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from ch_pipeline.warehouse.landing import LandingBatch, offsets_predicate
from ch_pipeline.warehouse.schema import REJECT_COLUMNS, REJECTS_TABLE, STREAM_COLUMNS, STREAM_TABLE, duckdb_ddl


@contextmanager
def connect(path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the file read-write and close it when the block ends (one writer process: docs/architecture.md §11)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    try:
        yield con
    finally:
        con.close()


def create_stream_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(duckdb_ddl(STREAM_TABLE, STREAM_COLUMNS))
    con.execute(duckdb_ddl(REJECTS_TABLE, REJECT_COLUMNS))


class DuckDBWarehouse:
    def __init__(self, path: Path) -> None:
        self.path = path

    def land(self, batch: LandingBatch) -> None:
        predicate = offsets_predicate(batch.ranges)
        with connect(self.path) as con:
            create_stream_tables(con)
            # Arrow tables are scanned in place by DuckDB (no row-by-row inserts); the column
            # lists come from the schema so the table's column order never matters.
            con.register("landing_rows", batch.rows)
            con.register("landing_rejects", batch.rejects)
            con.begin()
            try:
                for table, columns, source in (
                    (STREAM_TABLE, STREAM_COLUMNS, "landing_rows"),
                    (REJECTS_TABLE, REJECT_COLUMNS, "landing_rejects"),
                ):
                    names = ", ".join(c.name for c in columns)
                    con.execute(f"DELETE FROM {table} WHERE {predicate}")
                    con.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {source}")
                con.commit()
            except BaseException:
                con.rollback()
                raise
