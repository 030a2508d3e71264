"""The dbt assets over a generated history: after every batch the core equals the Python ground truth.

Real DuckDB, real dbt (through `@dbt_assets` and `dg.materialize`), the real bulk asset, one real
Dagster instance whose automation conditions are evaluated around every run (as the automation
sensor would). The history runs once per module (each dbt run costs seconds); each test asserts
one property of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pytest

from ch_pipeline.defs.dbt import ch_dbt_models, dbt_resource
from ch_pipeline_tests.dbt.conftest import BASELINE_FILE_DATE, DBT_MODELS, Ticks, configure_environment, load_bulk
from ch_pipeline_tests.dbt.history import (
    CoreRow,
    History,
    create_stream_table,
    expected_core,
    land,
    parse_bulk_csv,
    read_core,
    read_table,
    read_watermark,
)


@dataclass
class Step:
    name: str
    core: dict[str, CoreRow]
    expected: dict[str, CoreRow]
    watermark: dict[int, int]
    landed_max_offset: dict[int, int]
    checks: dict[str, bool]
    requested_before_run: set[str]
    requested_after_run: set[str]


@dataclass
class Recording:
    bulk: dict[str, CoreRow]
    history: History
    steps: list[Step] = field(default_factory=list)
    tables_before_rerun: dict[str, list[tuple]] = field(default_factory=dict)
    tables_after_rerun: dict[str, list[tuple]] = field(default_factory=dict)
    requested_on_an_empty_instance: set[str] = field(default_factory=set)
    core_bulk_file: str | None = None


TABLES = {"company_house_core": "company_number", "get_last_timestamp": "kafka_partition", "company_house_deletions": "company_number"}


def run_dbt(instance: dg.DagsterInstance) -> dict[str, bool]:
    result = dg.materialize([ch_dbt_models], resources={"dbt": dbt_resource()}, instance=instance)
    assert result.success
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def landed_max(history: History) -> dict[int, int]:
    highest: dict[int, int] = {}
    for event in history.log.landed:
        highest[event.kafka_partition] = max(highest.get(event.kafka_partition, -1), event.kafka_offset)
    return highest


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory, bulk_csv: Path) -> Recording:
    root = tmp_path_factory.mktemp("history")
    with pytest.MonkeyPatch.context() as env, dg.instance_for_test() as instance:
        db = configure_environment(env, root)
        create_stream_table(db)
        ticks = Ticks(instance)
        bulk = parse_bulk_csv(bulk_csv)
        history = History(bulk)
        recording = Recording(bulk, history)
        recording.requested_on_an_empty_instance = ticks.requested()
        load_bulk(db, bulk_csv, instance)

        def record(name: str) -> None:
            before = ticks.requested()
            checks = run_dbt(instance)
            recording.steps.append(
                Step(name, read_core(db), expected_core(bulk, history.log.landed), read_watermark(db), landed_max(history),
                     checks, before, ticks.requested())
            )

        record("bulk only")
        batches = [history.batch_1, history.batch_2, history.batch_3, history.batch_4, history.batch_5]
        landed_in: dict[int, list] = {}
        for number, make_batch in enumerate(batches, start=1):
            events = make_batch()
            if number == 5:
                events += history.late_range  # offsets batch 3 skipped land now, after the watermark passed them
                land(db, landed_in[1], stream_partition="batch-1")  # and batch 1 is re-landed (a re-run)
            land(db, events, stream_partition=f"batch-{number}")
            # What the stream asset's landing run records: a materialization naming its offsets.
            instance.report_runless_asset_event(dg.AssetMaterialization("company_house_stream", metadata={"landing": f"batch-{number}"}))
            history.log.landed.extend(events)
            landed_in[number] = events
            record(f"batch {number}")

        core = instance.get_latest_materialization_event(dg.AssetKey("company_house_core")).asset_materialization
        recording.core_bulk_file = core.metadata["bulk_file_date"].value
        recording.tables_before_rerun = {t: read_table(db, t, key) for t, key in TABLES.items()}
        run_dbt(instance)  # no new stream data
        recording.tables_after_rerun = {t: read_table(db, t, key) for t, key in TABLES.items()}
    return recording


def test_core_equals_the_ground_truth_after_every_step(recording: Recording):
    assert len(recording.steps) == 6
    for step in recording.steps:
        assert step.core == step.expected, f"core differs from the ground truth after {step.name}"
    assert recording.steps[0].core == recording.bulk  # the first build is the bulk snapshot


def test_the_core_says_which_bulk_file_it_agrees_with(recording: Recording):
    """The month of the bulk file in force, on the core's materialization (the UI's lineage shows it)."""
    assert recording.core_bulk_file == BASELINE_FILE_DATE.isoformat()


def test_watermark_never_decreases_and_covers_what_was_applied(recording: Recording):
    previous: dict[int, int] = {}
    for step in recording.steps:
        for partition, offset in previous.items():
            assert step.watermark[partition] >= offset, f"watermark went back at {step.name}"
        if step.name == "batch 4":
            assert step.watermark == previous, "a batch without company events must leave the watermark unchanged"
        else:
            assert step.watermark == step.landed_max_offset
        previous = step.watermark
    assert recording.steps[0].watermark == {}


def test_dbt_tests_pass_as_asset_checks(recording: Recording):
    for step in recording.steps:
        assert len(step.checks) == 15
        assert [name for name, passed in step.checks.items() if not passed] == [], step.name
    assert {"unique_company_house_core_company_number", "not_null_company_house_core_company_number"} <= set(recording.steps[-1].checks)
    assert any(name.startswith("never_decreases_get_last_timestamp") for name in recording.steps[-1].checks)


def test_the_tutorials_bugs_are_designed_out(recording: Recording):
    history, core = recording.history, recording.steps[-1].core
    assert core[history.two_in_one_batch][1] == "liquidation"  # newest of two in one batch; a late older one ignored
    assert history.deleted_in_batch_1[0] not in core  # a late older `changed` did not resurrect a deleted company
    assert core[history.deleted_in_batch_1[1]][0] == "BACK AGAIN LTD"  # a newer `changed` did
    late = {e.company_number for e in history.late_range}
    assert late and all(recording.steps[-1].expected.get(n) == core.get(n) for n in late)


def test_running_again_without_new_stream_data_changes_nothing(recording: Recording):
    assert recording.tables_after_rerun == recording.tables_before_rerun
    assert len(recording.tables_before_rerun["company_house_core"]) > 10_000 - 100

    # Batch 5 also re-landed batch 1 (new ingested_at): read again, and the core is still the truth.
    assert recording.steps[-1].core == recording.steps[-1].expected


def test_automation_requests_all_five_models_after_each_new_stream_partition(recording: Recording):
    """Bulk first (the core starts from it); then after every landed partition the four models are
    requested in the same tick (one run, one `dbt build`); a finished run does not retrigger itself."""
    assert recording.requested_on_an_empty_instance == {"company_house_bulk"}
    for step in recording.steps:
        # The models wait for the stream's first landed partition (the stream table exists only then);
        # the history's "bulk only" step runs dbt by hand before that.
        expected = set() if step.name == "bulk only" else DBT_MODELS
        assert step.requested_before_run == expected, step.name
        assert step.requested_after_run == set(), step.name
