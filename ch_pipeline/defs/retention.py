"""Keep the Dagster instance's own history bounded (docs/architecture.md §14).

Dagster keeps every run and its event log for ever, and a landing every sensor tick is ~2,880 runs
a day. The warehouse is the lasting record of what was landed when (each row's ``stream_partition``
names its landing's offsets, ``ingested_at`` says when), so the instance only needs recent runs: to
show them, retry them and re-execute them. This sensor deletes finished runs older than
``CH_HISTORY_RETENTION_DAYS`` with their events, compute logs and (local SQLite) event-log file;
sensor ticks are pruned by ``retention`` in dagster.yaml.

Never deleted: a run that holds an asset's latest materialization or its planned next one (the dbt
automation condition reads their start times), and runs not finished. A failed run is retried
within minutes, so at a day or more old its retry is long done (the window is at least one day).
"""

from __future__ import annotations

import contextlib
import os
from datetime import datetime, timedelta, timezone

import dagster as dg
from dagster._core.storage.dagster_run import FINISHED_STATUSES, RunsFilter
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

from ch_pipeline.settings import history_retention_days

DEFAULT_RETENTION_DAYS = 7
# A day of landings is ~2,880 runs; an hourly tick deleting up to this many catches up after a pause.
MAX_DELETIONS_PER_TICK = 2_000
RETENTION_INTERVAL_SECONDS = 3_600


def runs_in_use(instance: dg.DagsterInstance) -> set[str]:
    """Runs an asset's latest or planned materialization points at."""
    in_use = set()
    for record in instance.get_asset_records():
        entry = record.asset_entry
        in_use |= {entry.last_run_id, entry.last_planned_materialization_run_id}
        if entry.last_materialization_record is not None:
            in_use.add(entry.last_materialization_record.run_id)
    return in_use - {None, ""}


def delete_run_history(instance: dg.DagsterInstance, run_id: str) -> None:
    """The run, its event log, its captured logs and, on local SQLite storage, its event-log file."""
    instance.delete_run(run_id)
    with contextlib.suppress(NotImplementedError, OSError):
        instance.compute_log_manager.delete_logs(prefix=[run_id])
    storage = instance.event_log_storage
    if isinstance(storage, SqliteEventLogStorage):
        shard = storage.path_for_shard(run_id)
        for path in (shard, f"{shard}-wal", f"{shard}-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def prune_run_history(instance: dg.DagsterInstance, older_than: datetime, limit: int = MAX_DELETIONS_PER_TICK) -> int:
    """Delete up to ``limit`` finished runs created before ``older_than``, oldest first; how many."""
    in_use = runs_in_use(instance)
    records = instance.get_run_records(
        filters=RunsFilter(statuses=list(FINISHED_STATUSES), created_before=older_than),
        limit=limit,
        ascending=True,
    )
    deleted = 0
    for record in records:
        if record.dagster_run.run_id in in_use:
            continue
        delete_run_history(instance, record.dagster_run.run_id)
        deleted += 1
    return deleted


def build_retention_sensor(retention_days: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="dagster_history_retention",
        minimum_interval_seconds=RETENTION_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Deletes finished runs older than {retention_days} days (CH_HISTORY_RETENTION_DAYS) with their "
        "logs; the warehouse keeps which landing wrote each row, and when.",
    )
    def dagster_history_retention(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        older_than = datetime.now(timezone.utc) - timedelta(days=retention_days)
        deleted = prune_run_history(context.instance, older_than)
        return dg.SkipReason(f"deleted {deleted} runs created before {older_than:%Y-%m-%d %H:%M} UTC")

    return dagster_history_retention


dagster_history_retention = build_retention_sensor(history_retention_days(DEFAULT_RETENTION_DAYS))
