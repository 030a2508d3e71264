"""Load the bulk snapshot into ``company_house_bulk``: DuckDB reads the CSV itself, BigQuery runs a
load job; neither goes through pandas. One cleaning query, written once, with the few dialect
differences passed in (DESIGN §3: quoted fields, DD/MM/YYYY, title-case statuses).
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from ch_pipeline.companies_house.bulk_csv import (
    BULK_SOURCE_COLUMNS,
    BULK_STATUS_TO_STREAM,
    DATE_FORMAT,
    HEADER,
    check_header,
    column_name,
    csv_member,
)
from ch_pipeline.warehouse.schema import BULK_COLUMNS, BULK_TABLE

Progress = Callable[[str], None]
STAGING_COLUMNS = [column_name(name) for name in HEADER]
_DOWNLOAD_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class Dialect:
    """The SQL that differs between DuckDB and BigQuery in the cleaning query."""

    regexp_replace_all: Callable[[str, str, str], str]
    parse_dmy_date: Callable[[str], str]
    month_start: Callable[[str], str]


DUCKDB = Dialect(
    regexp_replace_all=lambda value, pattern, repl: f"regexp_replace({value}, '{pattern}', '{repl}', 'g')",
    parse_dmy_date=lambda value: f"cast(try_strptime({value}, '{DATE_FORMAT}') as date)",
    month_start=lambda value: f"cast(date_trunc('month', {value}) as date)",
)
BIGQUERY = Dialect(
    regexp_replace_all=lambda value, pattern, repl: f"regexp_replace({value}, r'{pattern}', '{repl}')",
    parse_dmy_date=lambda value: f"safe.parse_date('{DATE_FORMAT}', {value})",
    month_start=lambda value: f"date_trunc({value}, month)",
)


def _status_sql(value: str, dialect: Dialect) -> str:
    """Bulk status -> the stream's enumeration; an unknown status becomes a lower-case slug."""
    key = f"lower(trim({value}))"
    cases = " ".join(f"when '{bulk}' then '{stream}'" for bulk, stream in BULK_STATUS_TO_STREAM.items())
    slug = dialect.regexp_replace_all(key, "[^a-z0-9]+", "-")
    return f"case {key} {cases} else nullif({slug}, '') end"


def _postcode_sql(value: str, dialect: Dialect) -> str:
    """Upper case, single inner space, NULL when blank: the form the stream carries."""
    return f"nullif({dialect.regexp_replace_all(f'upper(trim({value}))', '[[:space:]]+', ' ')}, '')"


def cleaning_select(raw_relation: str, dialect: Dialect) -> str:
    """SELECT producing BULK_COLUMNS from the raw (all-text) bulk columns of `raw_relation`.

    One row per company: the published file has no company twice, but a repeat must not break the
    core's unique key; which row is kept is deterministic (the greatest name), on both engines.
    """
    col = {ours: column_name(theirs) for ours, theirs in BULK_SOURCE_COLUMNS.items()}
    created = dialect.parse_dmy_date(col["date_of_creation"])
    expressions = {
        "company_name": f"nullif(trim({col['company_name']}), '')",
        "company_number": f"upper(trim({col['company_number']}))",
        "company_status": _status_sql(col["company_status"], dialect),
        "date_of_creation": created,
        "postal_code": _postcode_sql(col["postal_code"], dialect),
        "month_of_creation": dialect.month_start(created),
    }
    assert list(expressions) == [c.name for c in BULK_COLUMNS], "cleaning must produce BULK_COLUMNS in order"
    select_list = ",\n  ".join(f"{sql} as {name}" for name, sql in expressions.items())
    return (
        f"select\n  {select_list}\nfrom {raw_relation}\n"
        f"where nullif(trim({col['company_number']}), '') is not null\n"
        f"qualify row_number() over (\n"
        f"  partition by upper(trim({col['company_number']})) order by trim({col['company_name']}) desc\n) = 1"
    )


# --- Getting the CSV onto local disk -------------------------------------------------------------


@contextmanager
def local_csv(source: str, progress: Progress = print) -> Iterator[Path]:
    """A local path to the CSV that `source` (a path or URL) names, .csv or .zip; temporary files are removed after."""
    with tempfile.TemporaryDirectory(prefix="ch-bulk-") as scratch:
        path = Path(source)
        if source.startswith(("http://", "https://")):
            path = _download(source, Path(scratch), progress)
        if not path.exists():
            raise FileNotFoundError(f"bulk CSV not found: {source} (set CH_BULK_CSV to a path or URL)")
        if path.suffix.lower() == ".zip":
            path = _unzip(path, Path(scratch), progress)
        with path.open(encoding="utf-8-sig") as stream:
            check_header(stream.readline())
        yield path


def _download(url: str, scratch: Path, progress: Progress) -> Path:
    target = scratch / Path(url.split("?")[0]).name
    with requests.get(url, stream=True, timeout=(10, 120)) as response:
        response.raise_for_status()
        total = int(response.headers.get("content-length") or 0)
        done, reported = 0, 0
        with target.open("wb") as out:
            for chunk in response.iter_content(_DOWNLOAD_CHUNK):
                out.write(chunk)
                done += len(chunk)
                if done - reported >= 100 * _DOWNLOAD_CHUNK or done == total:
                    progress(f"downloaded {done / 1e6:,.0f} MB" + (f" of {total / 1e6:,.0f} MB" if total else ""))
                    reported = done
    return target


def _unzip(zip_path: Path, scratch: Path, progress: Progress) -> Path:
    member = csv_member(zip_path)
    target = scratch / Path(member).name
    progress(f"unzipping {member} from {zip_path.name}")
    with zipfile.ZipFile(zip_path) as archive, archive.open(member) as source, target.open("wb") as out:
        shutil.copyfileobj(source, out, _DOWNLOAD_CHUNK)
    return target


# --- DuckDB --------------------------------------------------------------------------------------


def duckdb_read_csv(path: Path) -> str:
    """DuckDB's CSV reader over the file; columns by position (the header was checked) and all text,
    so a malformed date becomes NULL in the cleaning step instead of failing the load."""
    names = ", ".join(f"'{name}'" for name in STAGING_COLUMNS)
    quoted = str(path).replace("'", "''")
    return (
        f"read_csv('{quoted}', header = true, names = [{names}], all_varchar = true, "
        "quote = '\"', escape = '\"', delim = ',', strict_mode = false)"
    )


def load_duckdb(connection, source: str, table: str = BULK_TABLE, progress: Progress = print) -> int:
    """Replace `table` with the cleaned bulk snapshot in one statement; returns its row count."""
    with local_csv(source, progress) as path:
        progress(f"loading {path.name} into DuckDB table {table}")
        connection.execute(f"create or replace table {table} as\n{cleaning_select(duckdb_read_csv(path), DUCKDB)}")
    [(rows,)] = connection.execute(f"select count(*) from {table}").fetchall()
    progress(f"{table}: {rows:,} companies")
    return rows


# --- BigQuery ------------------------------------------------------------------------------------


def load_bigquery(client, dataset: str, source: str, table: str = BULK_TABLE, progress: Progress = print) -> int:
    """Load job into a staging table (all STRING, by position), then one cleaning query replaces `table`."""
    from google.cloud import bigquery

    staging = f"{client.project}.{dataset}.{table}_staging"
    target = f"{client.project}.{dataset}.{table}"
    job_config = bigquery.LoadJobConfig(
        source_format=bigquery.SourceFormat.CSV,
        skip_leading_rows=1,
        schema=[bigquery.SchemaField(name, "STRING") for name in STAGING_COLUMNS],
        # No allow_quoted_newlines: the published file has none, and the offline emulator refuses
        # the option (deploy/bigquery-emulator.md); a stray one fails the job loudly, losing nothing.
        write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
    )
    with local_csv(source, progress) as path, path.open("rb") as stream:
        progress(f"BigQuery load job: {path.name} -> {staging}")
        client.load_table_from_file(stream, staging, job_config=job_config).result()
    progress(f"cleaning {staging} -> {target}")
    client.query(f"create or replace table `{target}` as\n{cleaning_select(f'`{staging}`', BIGQUERY)}").result()
    client.delete_table(staging, not_found_ok=True)
    rows = client.get_table(target).num_rows
    progress(f"{target}: {rows:,} companies")
    return rows
