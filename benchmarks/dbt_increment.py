"""dbt increment: 50k stream events merged into a 5M-row core, vs rebuilding the core from scratch.

A 5M-company bulk table (the size of the published snapshot) and the stream table are generated
in DuckDB; the first ``dbt build`` makes the core from the bulk. Then 50k events land (updates,
new companies, deletions) and ``dbt build`` (the command the dbt assets run: snapshot, tombstones,
core, watermark and their 13 tests) applies them: that is ours. The baseline is the same
``dbt build --full-refresh``, i.e. recomputing the core from the bulk and the whole stream. Wall
time includes dbt's start-up (~3-5 s), as in a Dagster run.

The last rows launch the same increment the way the automation does, through Dagster (the
``ch_dbt_models`` asset in one in-process run, dagster-dbt invoking dbt): dbt's own elapsed time
vs the run's wall time, and whether dbt parsed the project partially (its save file kept in
``settings.dbt_build_target_path()`` from the previous build) or from scratch.

``python -m benchmarks.dbt_increment [--companies N] [--events N]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from ch_pipeline.defs.dbt import DBT_PROJECT_DIR, STREAM_MODELS
from ch_pipeline.warehouse.schema import BULK_COLUMNS, BULK_TABLE, STREAM_COLUMNS, STREAM_TABLE, duckdb_ddl


# The bulk file's date: a month before the events' (published from 2026-11-01), so every event is newer.
BULK_FILE_DATE = "date '2026-10-01'"


def generate_bulk(db: Path, companies: int) -> None:
    with duckdb.connect(str(db)) as con:
        con.execute(duckdb_ddl(STREAM_TABLE, STREAM_COLUMNS))
        con.execute(duckdb_ddl(BULK_TABLE, BULK_COLUMNS))
        con.execute(
            f"""insert into {BULK_TABLE}
            select 'COMPANY ' || i || ' LIMITED', lpad(i::varchar, 8, '0'), 'active',
                   date '1990-01-01' + (i % 12000)::int, 'SW1A ' || (i % 9) || 'AA',
                   date_trunc('month', date '1990-01-01' + (i % 12000)::int)::date, {BULK_FILE_DATE}
            from range(1, {companies} + 1) t(i)"""
        )


def land_events(db: Path, companies: int, events: int, first_offset: int) -> None:
    """`events` rows over two Kafka partitions: 80% updates, 10% new companies, 10% deletions."""
    with duckdb.connect(str(db)) as con:
        con.execute(
            f"""insert into {STREAM_TABLE} by name
            select
                'RENAMED ' || n || ' LTD' as company_name,
                case when i % 10 = 1 then 'NEW' || lpad(i::varchar, 6, '0')
                     else lpad((hash(i + {first_offset}) % {companies} + 1)::varchar, 8, '0') end as company_number,
                'liquidation' as company_status,
                date '2020-01-01' as date_of_creation,
                'M1 1AE' as postal_code,
                timestamptz '2026-11-01 00:00:00+00' + to_seconds(i + {first_offset}) as published_at,
                case when i % 10 = 2 then 'deleted' else 'changed' end as event_type,
                'company-profile' as resource_kind,
                (i % 2)::int as kafka_partition,
                ({first_offset} + i)::bigint as kafka_offset,
                now() as kafka_timestamp,
                'bench-{first_offset}' as stream_partition,
                now() as ingested_at
            from range(0, {events}) t(i), (select 1 as n)"""
        )


def dbt_build(db: Path, target_path: Path, *extra: str) -> tuple[float, float]:
    """(wall seconds, dbt's own elapsed seconds) of one `dbt build` of what ``ch_dbt_models`` builds:
    every model but the other streams' (their own asset, ``ch_dbt_stream_models``)."""
    env = {**os.environ, "CH_DUCKDB_PATH": str(db), "DBT_TARGET": "duckdb"}
    dbt = str(Path(sys.executable).parent / "dbt")
    started = time.perf_counter()
    subprocess.run(
        [dbt, "build", "--quiet", "--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR),
         "--target-path", str(target_path), "--exclude", STREAM_MODELS, *extra],
        env=env, check=True,
    )  # fmt: skip
    wall = time.perf_counter() - started
    results = json.loads((target_path / "run_results.json").read_text())
    return wall, results["elapsed_time"]


def parse_kind(log: Path) -> str:
    """How the last dbt invocation logged in ``log`` parsed the project (dbt.log is appended to)."""
    text = log.read_text(errors="replace")
    last = text[text.rfind("Running with dbt="):]
    for marker, kind in (("Partial parsing enabled", "partial"), ("Unable to do partial parsing", "full"),
                         ("Partial parse save file not found", "full")):  # fmt: skip
        if marker in last:
            return kind
    return "unknown"


def dagster_dbt_build(db: Path, target_root: Path) -> tuple[float, float, str]:
    """(run wall seconds, dbt's elapsed seconds, parse kind) of one in-process Dagster run of the dbt assets."""
    import dagster as dg

    from ch_pipeline.defs.dbt import ch_dbt_models, dbt_resource
    from ch_pipeline.settings import dbt_build_target_path

    env = {"CH_DUCKDB_PATH": str(db), "DBT_TARGET": "duckdb", "DBT_TARGET_PATH": str(target_root)}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        with dg.instance_for_test() as instance:
            started = time.perf_counter()
            result = dg.materialize([ch_dbt_models], resources={"dbt": dbt_resource()}, instance=instance)
            wall = time.perf_counter() - started
        assert result.success
        target = dbt_build_target_path()
    finally:
        for name, value in saved.items():
            os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)
    elapsed = json.loads((target / "run_results.json").read_text())["elapsed_time"]
    return wall, elapsed, parse_kind(target / "dbt.log")


def core_rows(db: Path) -> int:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("select count(*) from company_house_core").fetchall()[0][0]


def run(companies: int = 5_000_000, events: int = 50_000) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench-dbt-") as scratch:
        db, target = Path(scratch) / "warehouse.duckdb", Path(scratch) / "target"
        generate_bulk(db, companies)
        first_wall, _ = dbt_build(db, target)
        assert core_rows(db) == companies
        land_events(db, companies, events, first_offset=0)
        ours_wall, ours_dbt = dbt_build(db, target)
        after_increment = core_rows(db)
        land_events(db, companies, events, first_offset=events)
        base_wall, base_dbt = dbt_build(db, target, "--full-refresh")
        dagster_target = Path(scratch) / "dagster-target"
        cold = dagster_dbt_build(db, dagster_target)  # no save file yet: a full parse
        land_events(db, companies, events, first_offset=2 * events)
        warm = dagster_dbt_build(db, dagster_target)
    dagster_rows = [
        {"measure": f"dbt build through one Dagster run, {label} ({events:,} events into the core; dbt parsed: {kind}): "
                    "dbt's own elapsed vs the run's wall time",
         "ours": elapsed, "baseline": wall, "ratio": elapsed / wall, "unit": "s (ours: dbt elapsed; baseline: run wall)"}
        for label, (wall, elapsed, kind) in (("first run", cold), ("next run", warm))
    ]  # fmt: skip
    return [
        {"measure": f"dbt build: first build of a {companies:,}-row core from the bulk table", "ours": first_wall,
         "baseline": None, "ratio": None, "unit": "s"},
        {"measure": f"dbt build: {events:,} events into a {companies:,}-row core, wall (ratio = speed-up vs full refresh)",
         "ours": ours_wall, "baseline": base_wall, "ratio": base_wall / ours_wall, "unit": "s"},
        {"measure": "dbt build: same, dbt's own elapsed time (without start-up)", "ours": ours_dbt, "baseline": base_dbt,
         "ratio": base_dbt / ours_dbt, "unit": "s"},
        {"measure": "core rows after the increment", "ours": after_increment, "baseline": None, "ratio": None, "unit": "rows"},
        *dagster_rows,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--companies", type=int, default=5_000_000)
    parser.add_argument("--events", type=int, default=50_000)
    args = parser.parse_args()
    for row in run(args.companies, args.events):
        print(row)


if __name__ == "__main__":
    main()
