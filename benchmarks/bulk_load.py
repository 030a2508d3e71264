"""Bulk snapshot load: DuckDB's CSV reader straight into the table vs the tutorial's pandas path.

Both load the same generated BasicCompanyDataAsOneFile (1M rows by default, the published header
and quoting) into a fresh DuckDB table with the same cleaning, each in its own child process so
that wall time and peak RSS (from ``wait4``) are measured alike. The tutorial read the whole file
with ``pandas.read_csv``, kept six columns, parsed the dates and derived ``month_of_creation``,
then wrote the frame to the warehouse; the baseline does exactly that into DuckDB.

``python -m benchmarks.bulk_load [--rows N]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ch_pipeline.companies_house.bulk_csv import write_sample

OURS = """
import sys, duckdb
from ch_pipeline.companies_house.bulk_csv import SAMPLE_FILE_DATE
from ch_pipeline.warehouse.duckdb_warehouse import load_duckdb
with duckdb.connect(sys.argv[2]) as con:
    print(load_duckdb(con, sys.argv[1], SAMPLE_FILE_DATE, progress=lambda _: None))
"""

TUTORIAL = """
import sys, duckdb, pandas as pd
df = pd.read_csv(sys.argv[1])
df.columns = [c.strip() for c in df.columns]
df = df[["CompanyName", "CompanyNumber", "CompanyStatus", "IncorporationDate", "RegAddress.PostCode"]]
df = df.rename(columns={"CompanyName": "company_name", "CompanyNumber": "company_number",
                        "CompanyStatus": "company_status", "IncorporationDate": "date_of_creation",
                        "RegAddress.PostCode": "postal_code"})
df["date_of_creation"] = pd.to_datetime(df["date_of_creation"], format="%d/%m/%Y", errors="coerce")
df["month_of_creation"] = df["date_of_creation"].dt.to_period("M").dt.to_timestamp().dt.date
df["date_of_creation"] = df["date_of_creation"].dt.date
df["company_status"] = df["company_status"].str.lower()
df["postal_code"] = df["postal_code"].str.upper().str.strip()
with duckdb.connect(sys.argv[2]) as con:
    con.register("frame", df)
    con.execute("create or replace table company_house_bulk as select * from frame")
    print(con.execute("select count(*) from company_house_bulk").fetchall()[0][0])
"""


def measure(script: str, csv_path: Path, db_path: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MiB, rows) of one child process."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", script, str(csv_path), str(db_path)], stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    output = child.stdout.read()
    if child.returncode != 0:
        raise RuntimeError(f"load failed ({child.returncode})")
    return elapsed, usage.ru_maxrss / 1024, int(output.strip().splitlines()[-1])


def run(rows: int = 1_000_000) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench-bulk-") as scratch:
        csv_path = write_sample(Path(scratch) / "BasicCompanyDataAsOneFile-bench.csv", rows=rows, seed=42)
        size_mb = csv_path.stat().st_size / 1e6
        ours_s, ours_mib, ours_rows = measure(OURS, csv_path, Path(scratch) / "ours.duckdb")
        base_s, base_mib, base_rows = measure(TUTORIAL, csv_path, Path(scratch) / "tutorial.duckdb")
    assert ours_rows == base_rows == rows, (ours_rows, base_rows)
    label = f"{rows:,} rows ({size_mb:,.0f} MB CSV)"
    return [
        {"measure": f"bulk load {label}: wall time (ratio = speed-up)", "ours": ours_s, "baseline": base_s,
         "ratio": base_s / ours_s, "unit": "s"},
        {"measure": f"bulk load {label}: peak RSS (ratio = ours / baseline)", "ours": ours_mib, "baseline": base_mib,
         "ratio": ours_mib / base_mib, "unit": "MiB"},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    for row in run(parser.parse_args().rows):
        print(f"{row['measure']}: ours {row['ours']:.2f} {row['unit']}, tutorial {row['baseline']:.2f}, ratio {row['ratio']:.2f}")


if __name__ == "__main__":
    main()
