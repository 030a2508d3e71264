"""The instance's history stays bounded: old runs go with their events and files, the runs the
automation reads stay. Real runs on a real SQLite instance (the storage ``dagster dev`` uses)."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ch_pipeline.defs.retention import build_retention_sensor, prune_run_history

REPO = Path(__file__).resolve().parents[2]


@dg.asset
def landed() -> None:
    print("captured stdout of a run")


@dg.asset(deps=[landed])
def built() -> None:
    pass


@pytest.fixture
def instance(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as test_instance:
        yield test_instance


def run_files(instance: dg.DagsterInstance, run_id: str) -> list[Path]:
    """Files on disk that belong to one run (its event-log shard, its captured logs)."""
    root = Path(instance.root_directory)
    return [p for p in root.rglob("*") if run_id in str(p.relative_to(root)) and p.is_file()]


def test_old_runs_are_deleted_with_their_files_and_the_latest_materializations_stay(instance):
    runs = [dg.materialize([landed], instance=instance).run_id for _ in range(3)]
    runs.append(dg.materialize([landed, built], selection=[built], instance=instance).run_id)
    assert all(run_files(instance, run_id) for run_id in runs), "each run wrote files"

    future = datetime.now(timezone.utc) + timedelta(seconds=1)
    assert prune_run_history(instance, older_than=future) == 2

    # The newest run of each asset is what its latest materialization points at: kept.
    kept = {run.run_id for run in instance.get_runs()}
    assert kept == {runs[2], runs[3]}
    for run_id in runs[:2]:
        assert instance.get_run_by_id(run_id) is None
        assert run_files(instance, run_id) == []
    materializations = instance.fetch_materializations(dg.AssetKey("landed"), limit=10).records
    assert [record.run_id for record in materializations] == [runs[2]], "the deleted runs' events are gone"
    assert instance.get_latest_materialization_event(dg.AssetKey("landed")).run_id == runs[2]
    # Nothing left to delete that may be deleted; and runs newer than the cut-off are never touched.
    assert prune_run_history(instance, older_than=future) == 0
    assert prune_run_history(instance, older_than=datetime.now(timezone.utc) - timedelta(days=1)) == 0


def test_the_sensor_keeps_the_retention_window(instance):
    run_id = dg.materialize([landed], instance=instance).run_id
    dg.materialize([landed], instance=instance)
    result = build_retention_sensor(retention_days=1)(dg.build_sensor_context(instance=instance))
    assert "deleted 0 runs" in result.skip_message
    assert instance.get_run_by_id(run_id) is not None, "a run of today is inside a one-day window"


@pytest.mark.parametrize("path", ["dagster.yaml", "deploy/dagster.yaml"])
def test_both_instances_prune_sensor_ticks(path):
    """Without this, Dagster keeps every successful sensor tick (one per landing) for ever."""
    ticks = yaml.safe_load((REPO / path).read_text())["retention"]["sensor"]["purge_after_days"]
    assert all(0 < ticks[status] <= 30 for status in ("skipped", "success", "failure", "started"))


def test_the_retention_window_is_validated(monkeypatch):
    from ch_pipeline.settings import history_retention_days

    monkeypatch.setenv("CH_HISTORY_RETENTION_DAYS", "0")
    with pytest.raises(ValueError, match="CH_HISTORY_RETENTION_DAYS"):
        history_retention_days(7)
    monkeypatch.setenv("CH_HISTORY_RETENTION_DAYS", "30")
    assert history_retention_days(7) == 30
    monkeypatch.delenv("CH_HISTORY_RETENTION_DAYS")
    assert history_retention_days(7) == 7 and os.environ.get("CH_HISTORY_RETENTION_DAYS") is None
