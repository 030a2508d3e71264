"""The demo's verdict: ``company_house_core`` and every other stream's current-state model against the
ground truth computed in Python, and its summary.

The ground truth is independent of the SQL: the bulk snapshot, then each company's newest served event
(``final_companies``, the same order as dbt's); for another stream, each item's newest served event,
deletions removed (``stream_events.final_items``). ``ch-pipeline demo``, the restart test, the production
topology test, the reliability harness and the daemon suite all judge the core with it.
"""

from __future__ import annotations

import statistics
from datetime import date, datetime, timezone
from pathlib import Path

from ch_pipeline.companies_house.streams import StreamSpec

COMPARED_COLUMNS = ("company_name", "company_status", "date_of_creation", "postal_code")


def expected_core(bulk_rows: dict[str, dict], events: list[dict]) -> dict[str, dict]:
    """Ground truth, independent of the SQL: the bulk baseline, then each company's latest event."""
    from ch_pipeline.companies_house.events import company_number_of, final_companies

    expected = dict(bulk_rows)
    final = final_companies(events)
    for number in {company_number_of(event) for event in events}:
        if number in final:
            expected[number] = final[number]
        else:
            expected.pop(number, None)  # its latest event deleted it
    return expected


def normalise(row: dict) -> tuple:
    """A row as the tuple of its compared columns (dates as ISO days), equal whatever read it."""
    values = []
    for column in COMPARED_COLUMNS:
        value = row.get(column)
        if isinstance(value, (date, datetime)):
            value = value.isoformat()[:10]
        values.append(value)
    return tuple(values)


def compare_core(duckdb_path: Path, events: list[dict]) -> dict:
    import duckdb

    with duckdb.connect(str(duckdb_path), read_only=True) as con:
        columns = ", ".join(("company_number", *COMPARED_COLUMNS))
        bulk = {r[0]: dict(zip(("company_number", *COMPARED_COLUMNS), r)) for r in con.execute(f"select {columns} from company_house_bulk").fetchall()}
        core = {r[0]: dict(zip(("company_number", *COMPARED_COLUMNS), r)) for r in con.execute(f"select {columns} from company_house_core").fetchall()}
        counts = {
            "stream rows": con.execute("select count(*) from company_house_stream").fetchone()[0],
            "rejects": con.execute("select count(*) from company_house_stream_rejects").fetchone()[0],
            "duplicate (partition, offset)": con.execute(
                "select count(*) from (select kafka_partition, kafka_offset from company_house_stream "
                "group by all having count(*) > 1)"
            ).fetchone()[0],
            "bulk rows": len(bulk),
            "core rows": len(core),
        }
        watermark = con.execute("select * from get_last_timestamp order by all").fetchall()
        landed = con.execute("select ingested_at, kafka_timestamp from company_house_stream").fetchall()
    expected = expected_core(bulk, events)
    mismatched = [n for n in expected.keys() | core.keys() if n not in core or n not in expected or normalise(core[n]) != normalise(expected[n])]
    return {"counts": counts, "watermark": watermark, "landed": landed, "expected": len(expected), "mismatched": sorted(mismatched)}


def as_utc(value: datetime | str | None) -> datetime | None:
    """An instant as an aware UTC datetime, from the model (naive = UTC) or an ISO ``published_at``."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value is None or value.tzinfo is not None:
        return value.astimezone(timezone.utc) if value is not None else None
    return value.replace(tzinfo=timezone.utc)


def compare_stream_model(duckdb_path: Path, spec: StreamSpec, events: list[dict]) -> dict:
    """The stream's current-state model against the truth: the same items, each at its newest event."""
    import duckdb

    from ch_pipeline.companies_house.stream_events import final_items

    with duckdb.connect(str(duckdb_path), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        held = {(number, item): (kind, as_utc(published)) for number, item, kind, published in con.execute(
            f"select company_number, item_id, resource_kind, last_published_at from {spec.current_model}").fetchall()}  # fmt: skip
        landed = con.execute(f"select count(*) from {spec.landing_table}").fetchone()[0]
        rejects = con.execute(f"select count(*) from {spec.rejects_table}").fetchone()[0]
    expected = {key: (row["resource_kind"], as_utc(row["published_at"])) for key, row in final_items(spec.name, events).items()}
    mismatched = sorted((key for key in expected.keys() | held.keys() if held.get(key) != expected.get(key)), key=str)
    return {"model": spec.current_model, "rows": len(held), "expected": len(expected), "landed": landed,
            "rejects": rejects, "mismatched": mismatched}  # fmt: skip


def latencies(landed: list[tuple[datetime, datetime]], core_runs: list[tuple[float, float]]) -> list[float]:
    """Seconds from the event entering Kafka to the end of the first dbt build that saw it: started after it
    landed, or built after landing it in the same run."""
    result = []
    for ingested_at, kafka_timestamp in landed:
        if kafka_timestamp is None:
            continue
        landed_at = ingested_at.timestamp()
        done = next((end for start, end in core_runs if start >= landed_at), None)
        if done is not None:
            result.append(done - kafka_timestamp.timestamp())
    return result


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def print_summary(console, served: int, progress, result: dict, elapsed: float, lat: list[float], streams: dict | None = None) -> None:
    from rich.table import Table

    table = Table(title="ch-pipeline demo", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    counts = result["counts"]
    p50, p95 = percentile(lat, 50), percentile(lat, 95)
    rows = [
        ("events served (incl. duplicates)", f"{served:,}"),
        ("messages in Kafka", f"{progress.messages:,}"),
        ("stream rows", f"{counts['stream rows']:,}"),
        ("rejects", f"{counts['rejects']:,}"),
        ("duplicate (partition, offset)", f"{counts['duplicate (partition, offset)']:,}"),
        ("bulk rows", f"{counts['bulk rows']:,}"),
        ("core rows (expected)", f"{counts['core rows']:,} ({result['expected']:,})"),
        ("core rows differing from ground truth", f"{len(result['mismatched']):,}"),
        ("watermark: last offset per Kafka partition", ", ".join(f"p{row[0]}: {row[1]:,}" for row in result["watermark"])),
        ("dbt runs", f"{len(progress.core_runs)}"),
        ("elapsed seconds", f"{elapsed:.1f}"),
        ("event -> core latency p50 / p95 (s)", f"{p50:.1f} / {p95:.1f}" if lat else "n/a"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    if streams:
        console.print(stream_table(streams))


def stream_table(streams: dict[str, dict]):
    """Per other stream's model: served, in Kafka, landed, rejects, model rows (expected), differing."""
    from rich.table import Table

    table = Table(title="every other stream", show_header=True)
    for column in ("model", "served", "in Kafka", "landed", "rejects", "rows (expected)", "differing"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for outcome in streams.values():
        table.add_row(outcome["model"], f"{outcome['served']:,}", f"{outcome['messages']:,}", f"{outcome['landed']:,}",
                      f"{outcome['rejects']:,}", f"{outcome['rows']:,} ({outcome['expected']:,})", f"{len(outcome['mismatched']):,}")  # fmt: skip
    return table
