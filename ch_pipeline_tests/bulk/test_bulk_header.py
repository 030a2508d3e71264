"""The bulk reader matches columns by name, not position (issue 16, item 3).

The published BasicCompanyDataAsOneFile has an unquoted header, some names with a leading space. A
file re-saved by a spreadsheet or a CSV tool quotes the names, may drop the stray spaces, may reorder
the columns or add some: each still loads, equal to the file read by name in Python. A file without a
column the loader needs fails naming that column (and only the columns really missing).
Real files, real DuckDB, the BigQuery emulator for the load job.
"""

from __future__ import annotations

import csv
import random
import zipfile
from pathlib import Path

import duckdb
import pytest

from ch_pipeline.companies_house.bulk_csv import BULK_SOURCE_COLUMNS, HEADER, SAMPLE_FILE_DATE as FILE_DATE, BulkFormatError, sample_rows
from ch_pipeline.warehouse.bigquery_warehouse import load_bigquery
from ch_pipeline.warehouse.duckdb_warehouse import load_duckdb
from ch_pipeline_tests.dbt.history import parse_bulk_csv

ROWS = 500


def write_csv(path: Path, header: list[str], rows: list[list[str]], *, quote_header: bool, bom: bool = False) -> Path:
    """Every data field quoted (as published); the header quoted or bare, names written as given."""
    def line(values: list[str], quoted: bool) -> str:
        return ",".join('"' + v.replace('"', '""') + '"' if quoted else v for v in values)

    with path.open("w", encoding="utf-8-sig" if bom else "utf-8", newline="") as out:
        out.write(line(header, quote_header) + "\r\n")
        out.writelines(line(row, True) + "\r\n" for row in rows)
    return path


def published_rows() -> list[list[str]]:
    return list(sample_rows(ROWS, seed=21))


def reshaped(order: list[int], extra: dict[int, str] | None = None) -> tuple[list[str], list[list[str]]]:
    """The published header and rows with columns taken in `order`, and extra columns (position -> name)."""
    header = [HEADER[i] for i in order]
    rows = [[row[i] for i in order] for row in published_rows()]
    for position, name in sorted((extra or {}).items()):
        header.insert(position, name)
        for number, row in enumerate(rows):
            row.insert(position, f"extra {number}")
    return header, rows


def load_into_duckdb(source: Path, tmp_path: Path) -> dict[str, tuple]:
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        load_duckdb(con, str(source), FILE_DATE, progress=lambda _: None)
        table = con.execute("select * exclude (file_date) from company_house_bulk").fetchall()
    return {number: (name, *rest) for name, number, *rest in table}


def expected(path: Path) -> dict[str, tuple]:
    truth = parse_bulk_csv(path)  # reads the columns by name
    assert len(truth) == ROWS
    return truth


def test_a_quoted_header_loads(tmp_path: Path):
    """A CSV tool re-saving the file quotes every name, leading spaces inside the quotes."""
    path = write_csv(tmp_path / "quoted.csv", HEADER, published_rows(), quote_header=True)
    assert path.read_text(encoding="utf-8").startswith('"CompanyName"," CompanyNumber",')
    assert load_into_duckdb(path, tmp_path) == expected(path)


def test_a_quoted_header_without_the_stray_spaces_and_a_byte_order_mark_loads(tmp_path: Path):
    """A spreadsheet's "CSV UTF-8" save: names trimmed and quoted, a byte order mark first."""
    header = [name.strip() for name in HEADER]
    path = write_csv(tmp_path / "trimmed.csv", header, published_rows(), quote_header=True, bom=True)
    assert path.read_bytes().startswith(b'\xef\xbb\xbf"CompanyName","CompanyNumber",')
    without_bom = write_csv(tmp_path / "trimmed-no-bom.csv", header, published_rows(), quote_header=True)
    assert load_into_duckdb(path, tmp_path) == expected(without_bom)


def test_reordered_and_extra_columns_load(tmp_path: Path):
    order = list(range(len(HEADER)))
    random.Random(5).shuffle(order)
    header, rows = reshaped(order, extra={0: "Notes", 20: '"Checked, by"', len(HEADER) + 1: "company_number_old"})
    path = write_csv(tmp_path / "reordered.csv", header, rows, quote_header=True)
    assert header.index(" CompanyNumber") != 1
    assert load_into_duckdb(path, tmp_path) == expected(path)


def test_only_the_needed_columns_are_needed(tmp_path: Path):
    needed = [i for i, name in enumerate(HEADER) if name.strip() in BULK_SOURCE_COLUMNS.values()]
    header, rows = reshaped(list(reversed(needed)))
    path = write_csv(tmp_path / "five.csv", header, rows, quote_header=False)
    assert load_into_duckdb(path, tmp_path) == expected(path)


def test_the_published_zip_with_a_quoted_reordered_header_loads(tmp_path: Path):
    order = list(reversed(range(len(HEADER))))
    header, rows = reshaped(order)
    path = write_csv(tmp_path / "BasicCompanyDataAsOneFile-2026-12-01.csv", header, rows, quote_header=True)
    archive = tmp_path / "BasicCompanyDataAsOneFile-2026-12-01.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(path, path.name)
    assert load_into_duckdb(archive, tmp_path) == expected(path)


@pytest.mark.parametrize("missing", ["IncorporationDate", "CompanyNumber", "RegAddress.PostCode"])
def test_a_missing_required_column_fails_with_its_real_name(missing: str, tmp_path: Path):
    order = [i for i, name in enumerate(HEADER) if name.strip() != missing]
    header, rows = reshaped(order)
    path = write_csv(tmp_path / "missing.csv", header, rows, quote_header=True)
    with duckdb.connect() as con, pytest.raises(BulkFormatError) as failure:
        load_duckdb(con, str(path), FILE_DATE, progress=lambda _: None)
    message = str(failure.value)
    assert repr(missing) in message
    for present in set(BULK_SOURCE_COLUMNS.values()) - {missing}:
        assert repr(present) not in message, message
    assert "BasicCompanyDataAsOneFile" in message


def test_a_header_naming_a_needed_column_twice_is_refused(tmp_path: Path):
    header, rows = reshaped(list(range(len(HEADER))), extra={3: "CompanyStatus"})
    path = write_csv(tmp_path / "twice.csv", header, rows, quote_header=True)
    with duckdb.connect() as con, pytest.raises(BulkFormatError, match="'CompanyStatus'"):
        load_duckdb(con, str(path), FILE_DATE, progress=lambda _: None)


def test_the_ground_truth_reads_by_name(tmp_path: Path):
    """The helper the tests compare with really reads by name (a reordered file, same companies)."""
    order = list(reversed(range(len(HEADER))))
    header, rows = reshaped(order)
    reordered = write_csv(tmp_path / "r.csv", header, rows, quote_header=True)
    published = write_csv(tmp_path / "p.csv", HEADER, published_rows(), quote_header=False)
    assert expected(reordered) == expected(published)
    with reordered.open(newline="") as stream:
        assert next(csv.reader(stream))[0] == HEADER[-1]


def test_bigquery_loads_a_quoted_reordered_header_with_extra_columns(tmp_path: Path, bigquery_emulator, bigquery_dataset):
    order = list(range(len(HEADER)))
    random.Random(8).shuffle(order)
    header, rows = reshaped(order, extra={2: "Notes"})
    path = write_csv(tmp_path / "reordered.csv", header, rows, quote_header=True)
    client = bigquery_emulator.client()
    assert load_bigquery(client, bigquery_dataset, str(path), FILE_DATE, progress=lambda _: None) == ROWS
    table = client.query(f"select * from `{bigquery_emulator.project}.{bigquery_dataset}.company_house_bulk`").result()
    loaded = {r["company_number"]: (r["company_name"], r["company_status"], r["date_of_creation"], r["postal_code"], r["month_of_creation"]) for r in table}
    assert loaded == expected(path)
