"""The monthly bulk refresh reconciles the core (issue 16, item 2): three files interleaved with stream
events (bulk_months.sequence), through the real bulk load, the real landing and real dbt builds, on
DuckDB and on the offline BigQuery emulator. After every step the core equals the Python truth
(bulk_months.Truth), and company_house_bulk_reconciliations names the files taken."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb
import pytest

from ch_pipeline.warehouse.bigquery_warehouse import BigQueryWarehouse
from ch_pipeline.warehouse.duckdb_warehouse import DuckDBWarehouse
from ch_pipeline_tests.dbt.bulk_months import File, Truth, sequence
from ch_pipeline_tests.dbt.conftest import configure_environment
from ch_pipeline_tests.dbt.event_order import landing_batch
from ch_pipeline_tests.dbt.test_event_order import core_build

FILE_DATES = [date(2026, 9, 1), date(2026, 10, 1), date(2026, 11, 1)]


def run_sequence(warehouse, folder: Path, core, reconciled) -> list[tuple[str, dict, dict]]:
    """Each step, then one dbt build; returns (step, core, truth) after each, and checks the record."""
    truth, seen = Truth(), []
    warehouse.create_stream_tables()
    for index, step in enumerate(sequence()):
        if isinstance(step, File):
            warehouse.load_bulk(str(step.write(folder)), step.file_date, progress=lambda _: None)
            truth.take_file(step)
            name = f"step {index}: file {step.file_date}"
        else:
            warehouse.land(landing_batch(step.messages, f"months-{index}"))
            truth.take_events(step.messages)
            name = f"step {index}: {len(step.messages)} events"
        core_build()
        seen.append((name, core(), truth.core()))
    assert reconciled() == FILE_DATES
    return seen


def assert_steps(seen: list[tuple[str, dict, dict]]) -> None:
    assert len(seen) == 6
    for name, core, expected in seen:
        assert core == expected, f"the core differs from the truth after {name}"


def test_three_months_on_duckdb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    db = configure_environment(monkeypatch, tmp_path)

    def query(sql: str) -> list[tuple]:
        with duckdb.connect(str(db), read_only=True) as con:
            return con.execute(sql).fetchall()

    seen = run_sequence(
        DuckDBWarehouse(db), tmp_path,
        lambda: {n: (name, status) for n, name, status in query("select company_number, company_name, company_status from company_house_core")},
        lambda: [d for (d,) in query("select file_date from company_house_bulk_reconciliations order by 1")],
    )  # fmt: skip
    assert_steps(seen)
    # The cases the sequence is made of, spelled out (the truth above could share a mistake with the SQL).
    after_october, after_late, end = seen[2][1], seen[3][1], seen[5][1]
    assert after_october["B"] == ("B OCT FILE", "active")  # a deleted company restored by a newer file
    assert "C" not in after_october and after_october["E"] == ("E SEP FILE", "dissolved")  # absent: live gone, closed kept
    assert after_october["G"] == ("G OCT FILE", "active") and after_october["A"] == ("A OCT FILE", "active")
    assert "C" not in after_late and "I" not in after_late  # late live events the file contradicts
    assert after_late["J"] == ("J LATE DISSOLVED", "dissolved") and after_late["A"] == ("A OCT FILE", "active")
    assert end["D"] == ("D NOV EVENT", "liquidation")  # an event newer than the file wins
    assert end["F"] == ("F NOV FILE", "active") and end["K"] == ("K NOV FILE", "active")
    assert end["B"] == ("B BACK", "active") and "H" not in end and end["A"] == ("A NOV EVENT", "active")


def test_three_months_on_the_bigquery_emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bigquery_emulator, bigquery_dataset):
    for name, value in bigquery_emulator.env(bigquery_dataset).items():
        monkeypatch.setenv(name, value)
    client = bigquery_emulator.client()
    dataset = f"{bigquery_emulator.project}.{bigquery_dataset}"
    seen = run_sequence(
        BigQueryWarehouse(client, bigquery_emulator.project, bigquery_dataset), tmp_path,
        lambda: {r[0]: (r[1], r[2]) for r in client.query(f"select company_number, company_name, company_status from `{dataset}.company_house_core`").result()},
        lambda: [r[0] for r in client.query(f"select file_date from `{dataset}.company_house_bulk_reconciliations` order by 1").result()],
    )  # fmt: skip
    assert_steps(seen)
