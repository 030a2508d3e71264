"""The bulk snapshot loader: the published format in, the stream's form out (real DuckDB, real files,
a real HTTP server, the BigQuery emulator), checked against the file parsed by hand in Python."""

from __future__ import annotations

import functools
import http.server
import threading
import zipfile
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from ch_pipeline.companies_house.bulk_csv import HEADER, BulkFormatError, sample_rows, write_sample
from ch_pipeline.companies_house.bulk_csv import SAMPLE_FILE_DATE as FILE_DATE
from ch_pipeline.companies_house.bulk_csv import published_name
from ch_pipeline.defs.bulk import company_house_bulk
from ch_pipeline.defs.resources import WarehouseResource
from ch_pipeline.warehouse.bigquery_warehouse import load_bigquery
from ch_pipeline.warehouse.duckdb_warehouse import load_duckdb
from ch_pipeline.warehouse.schema import BULK_COLUMNS
from ch_pipeline_tests.dbt.history import parse_bulk_csv

# Rows the generator does not produce: every odd spelling the published file has.
AWKWARD = [
    {"CompanyName": 'THE "QUOTED", LTD', "CompanyNumber": "sc900001", "CompanyStatus": "Active - Proposal to Strike off",
     "IncorporationDate": "29/02/2000", "RegAddress.PostCode": "  eh1   2ng "},
    {"CompanyName": "BAD DATE LTD", "CompanyNumber": "90000002", "CompanyStatus": "In Administration",
     "IncorporationDate": "31/02/2020", "RegAddress.PostCode": ""},
    {"CompanyName": "RECEIVER LTD", "CompanyNumber": "90000003", "CompanyStatus": "Live but Receiver Manager on at least one charge",
     "IncorporationDate": "01/12/1999", "RegAddress.PostCode": "M1 1AE"},
    {"CompanyName": "NEW KIND LTD", "CompanyNumber": "90000004", "CompanyStatus": "Some New Status",
     "IncorporationDate": "", "RegAddress.PostCode": "B33 8TH"},
    {"CompanyName": "DUPLICATE LTD", "CompanyNumber": "90000003", "CompanyStatus": "Dissolved",
     "IncorporationDate": "01/01/2001", "RegAddress.PostCode": "M1 1AE"},
    {"CompanyName": "NO NUMBER LTD", "CompanyNumber": "  ", "CompanyStatus": "Active",
     "IncorporationDate": "01/01/2001", "RegAddress.PostCode": "M1 1AE"},
]


def quoted(values: list[str]) -> str:
    return ",".join('"' + v.replace('"', '""') + '"' for v in values)


def awkward_line(fields: dict[str, str]) -> str:
    by_name = {name.strip(): "" for name in HEADER}
    by_name.update(fields)
    return quoted([by_name[name.strip()] for name in HEADER])


@pytest.fixture(scope="module")
def bulk_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bulk") / "BasicCompanyDataAsOneFile-2026-11-01.csv"
    write_sample(path, rows=3_000, seed=1)
    with path.open("a", encoding="utf-8", newline="") as out:
        out.write("".join(awkward_line(row) + "\r\n" for row in AWKWARD))
    return path


def load_into_duckdb(source: str, tmp_path: Path) -> dict[str, tuple]:
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        rows = load_duckdb(con, source, FILE_DATE, progress=lambda _: None)
        table = con.execute("select * exclude (file_date) from company_house_bulk").fetchall()
        columns = [d[0] for d in con.execute("describe company_house_bulk").fetchall()]
        file_dates = con.execute("select distinct file_date from company_house_bulk").fetchall()
    assert rows == len(table)
    assert columns == [c.name for c in BULK_COLUMNS]
    assert file_dates == [(FILE_DATE,)]  # every row stamped with the file's date
    return {number: (name, *rest) for name, number, *rest in table}


def test_sample_has_the_published_header_and_quoting(tmp_path: Path):
    path = write_sample(tmp_path / "s.csv", rows=10)
    lines = path.read_bytes().decode("utf-8").split("\r\n")
    assert lines[0].startswith("CompanyName, CompanyNumber,RegAddress.CareOf,")
    assert len(lines[0].split(",")) == 55
    assert all(line.startswith('"') and line.endswith('"') for line in lines[1:-1])
    assert len(list(sample_rows(1000))) == 1000


def test_duckdb_load_equals_the_file_cleaned_by_hand(bulk_file: Path, tmp_path: Path):
    loaded = load_into_duckdb(str(bulk_file), tmp_path)
    assert loaded == parse_bulk_csv(bulk_file)
    assert len(loaded) == 3_000 + 4  # the duplicate and the row without a number are dropped
    assert loaded["SC900001"] == ('THE "QUOTED", LTD', "active", *loaded["SC900001"][2:])
    assert loaded["SC900001"][3] == "EH1 2NG"
    assert loaded["90000002"][1:] == ("administration", None, None, None)  # 31/02: no date, not a failure
    assert loaded["90000003"][:2] == ("RECEIVER LTD", "receivership")  # a repeat keeps the greatest name
    assert loaded["90000004"][1] == "some-new-status"
    statuses = {row[1] for row in loaded.values()}
    assert statuses <= {"active", "dissolved", "liquidation", "receivership", "converted-closed",
                        "voluntary-arrangement", "administration", "some-new-status"}


def test_the_published_zip_is_read(bulk_file: Path, tmp_path: Path):
    archive = tmp_path / "BasicCompanyDataAsOneFile-2026-11-01.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(bulk_file, bulk_file.name)
    assert load_into_duckdb(str(archive), tmp_path) == parse_bulk_csv(bulk_file)


def test_a_plain_http_url_is_refused(bulk_file: Path, tmp_path: Path):
    """Downloads are https on the Companies House host only (test_bulk_source_security.py has the https path)."""
    from ch_pipeline.warehouse.bulk_load import BulkSourceError

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(bulk_file.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/{bulk_file.name}"
        with pytest.raises(BulkSourceError, match="http"):
            load_into_duckdb(url, tmp_path)
    finally:
        server.shutdown()
        server.server_close()


def test_a_file_that_is_not_the_bulk_snapshot_fails_clearly(tmp_path: Path):
    wrong = tmp_path / "other.csv"
    wrong.write_text('"CompanyName","Status"\r\n"A","Active"\r\n')
    with duckdb.connect() as con, pytest.raises(BulkFormatError, match="BasicCompanyDataAsOneFile"):
        load_duckdb(con, str(wrong), FILE_DATE, progress=lambda _: None)
    with duckdb.connect() as con, pytest.raises(FileNotFoundError, match="CH_BULK_CSV"):
        load_duckdb(con, str(tmp_path / "missing.csv"), FILE_DATE, progress=lambda _: None)


def test_the_asset_generates_a_sample_when_nothing_is_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CH_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CH_BULK_CSV", raising=False)
    db = tmp_path / "warehouse.duckdb"
    result = dg.materialize(
        [company_house_bulk],
        resources={"warehouse": WarehouseResource(duckdb_path=str(db), data_dir=str(tmp_path))},
        run_config={"ops": {"company_house_bulk": {"config": {"sample_rows": 2_000}}}},
        partition_key=FILE_DATE.isoformat(),
    )
    assert result.success
    sample = tmp_path / "bulk" / published_name(FILE_DATE, ".csv")
    assert sample.exists()
    [materialization] = result.asset_materializations_for_node("company_house_bulk")
    assert materialization.metadata["dagster/row_count"].value == 2_000
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("select count(*) from company_house_bulk").fetchall() == [(2_000,)]
        # The dbt sources both exist after the bulk load, so the first dbt build can run at once.
        assert con.execute("select count(*) from company_house_stream").fetchall() == [(0,)]


def test_bigquery_load_job_gives_the_same_rows(bulk_file: Path, tmp_path: Path, bigquery_emulator, bigquery_dataset):
    client = bigquery_emulator.client()
    rows = load_bigquery(client, bigquery_dataset, str(bulk_file), FILE_DATE, progress=lambda _: None)
    table = client.query(f"select * from `{bigquery_emulator.project}.{bigquery_dataset}.company_house_bulk`").result()
    loaded = {r["company_number"]: (r["company_name"], r["company_status"], r["date_of_creation"], r["postal_code"], r["month_of_creation"]) for r in table}
    assert rows == len(loaded) == 3_004
    assert loaded == parse_bulk_csv(bulk_file)


def test_repeats_keep_the_greatest_name_wherever_they_stand(tmp_path: Path):
    """DuckDB writes every row, then deletes the repeats (drop_repeats_sql): a company three times,
    the keeper neither first nor last, and a repeat whose other row has no name."""
    path = write_sample(tmp_path / "BasicCompanyDataAsOneFile-2026-11-01.csv", rows=200, seed=3)
    repeats = [
        {"CompanyName": "BRAVO LTD", "CompanyNumber": "91000001", "CompanyStatus": "Active", "IncorporationDate": "01/01/2001"},
        {"CompanyName": "CHARLIE LTD", "CompanyNumber": " 91000001", "CompanyStatus": "Dissolved", "IncorporationDate": "02/02/2002"},
        {"CompanyName": "ALPHA LTD", "CompanyNumber": "91000001", "CompanyStatus": "Liquidation", "IncorporationDate": "03/03/2003"},
        {"CompanyName": "", "CompanyNumber": "sc910002", "CompanyStatus": "Dissolved", "IncorporationDate": "04/04/2004"},
        {"CompanyName": "NAMED LTD", "CompanyNumber": "SC910002", "CompanyStatus": "Active", "IncorporationDate": "05/05/2005"},
    ]
    with path.open("a", encoding="utf-8", newline="") as out:
        out.write("".join(awkward_line(row) + "\r\n" for row in repeats))
    loaded = load_into_duckdb(str(path), tmp_path)
    assert loaded == parse_bulk_csv(path)
    assert len(loaded) == 202
    assert loaded["91000001"][:2] == ("CHARLIE LTD", "dissolved")
    assert loaded["SC910002"][:2] == ("NAMED LTD", "active")


def test_a_load_that_fails_leaves_the_previous_table(bulk_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The table is replaced and its repeats deleted in one transaction: a failure in between
    leaves the previous load as it was, not a table with repeats in it."""
    import dataclasses

    from ch_pipeline.warehouse import duckdb_warehouse

    before = load_into_duckdb(str(bulk_file), tmp_path)
    failing = dataclasses.replace(duckdb_warehouse.DUCKDB, drop_repeats=lambda table: "select error('repeats not dropped')")
    monkeypatch.setattr(duckdb_warehouse, "DUCKDB", failing)
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        with pytest.raises(duckdb.Error, match="repeats not dropped"):
            load_duckdb(con, str(bulk_file), FILE_DATE, progress=lambda _: None)
        table = con.execute("select * exclude (file_date) from company_house_bulk").fetchall()
    assert {number: (name, *rest) for name, number, *rest in table} == before
