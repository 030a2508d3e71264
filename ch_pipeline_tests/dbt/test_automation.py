"""Declarative automation of the dbt assets, evaluated against a real Dagster instance.

Materializations are recorded in the instance as the stream and bulk runs would record them; the
conditions are the ones in ch_pipeline.definitions.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from ch_pipeline.companies_house.bulk_csv import SAMPLE_FILE_DATE
from ch_pipeline.companies_house.streams import COMPANIES, STREAMS
from ch_pipeline.definitions import defs
from ch_pipeline.defs.dbt import CORE_FRESHNESS, SNAPSHOT_FRESHNESS, STREAM_MODELS_MAX_WAIT_SECONDS, ch_dbt_models, dbt_automation_sensor
from ch_pipeline.warehouse.schema import BULK_TABLE
from ch_pipeline_tests.dbt.conftest import DBT_MODELS, STREAM_DBT_MODELS, Ticks

# The sequence bulk -> first build -> one request per new landing, with real runs, is
# asserted on the history in test_dbt_history.py.


def materialized(instance: dg.DagsterInstance, *keys: str) -> None:
    for key in keys:
        # The bulk asset is partitioned by file date: a file is a month's partition.
        partition = SAMPLE_FILE_DATE.isoformat() if key == BULK_TABLE else None
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition=partition))


@pytest.fixture
def ticks():
    with dg.instance_for_test() as instance:
        yield Ticks(instance)


def test_models_run_after_a_landing_while_the_next_landing_is_in_flight(ticks: Ticks):
    """A landing materializes the stream asset; the models are requested although the next landing
    run has not finished (the stream asset is not partitioned: docs/architecture.md §14)."""
    instance = ticks.instance
    materialized(instance, "company_house_bulk", *DBT_MODELS)
    ticks.requested()
    materialized(instance, "company_house_stream")
    assert ticks.requested() == DBT_MODELS


def test_a_stream_model_runs_after_its_landing_and_the_overview_after_it(ticks: Ticks):
    """Issue 15: officers_current after company_house_officers_stream landed (not the other streams'
    models, not the companies models); company_overview once every model it reads was built, not before
    (it selects from each: built while one stream has never landed, it fails)."""
    instance = ticks.instance
    materialized(instance, "company_house_bulk", *DBT_MODELS)
    assert "company_overview" not in ticks.requested()
    materialized(instance, "company_house_officers_stream")
    assert ticks.requested() == {"officers_current"}
    materialized(instance, "officers_current")
    assert ticks.requested() == set(), "pscs_current, charges_current, ... do not exist yet"
    materialized(instance, "pscs_current", "charges_current", "filings_current", "insolvency_current")
    assert ticks.requested() == {"company_overview"}
    materialized(instance, "company_overview")
    assert ticks.requested() == set()
    materialized(instance, "company_house_officers_stream")
    assert ticks.requested() == {"officers_current"}


def landing_in_flight(instance: dg.DagsterInstance, job_name: str) -> dg.DagsterRun:
    """A run of ``job_name`` as the daemon leaves it while the landing executes (STARTED)."""
    job = dg.define_asset_job(job_name).resolve(asset_graph=dg.Definitions(assets=[dg.AssetSpec(job_name + "_asset")]).resolve_asset_graph())
    return instance.create_run_for_job(job, status=dg.DagsterRunStatus.STARTED)


def test_stream_models_wait_for_the_rounds_other_landings_then_build_in_one_run(ticks: Ticks):
    """The other streams' landings of one round take turns in the pool: officers landed while the
    filings landing still runs, so officers_current waits; once filings has landed too, both models
    are requested in the same tick (one run). A companies landing in flight is not waited for."""
    instance = ticks.instance
    materialized(instance, "company_house_bulk", *DBT_MODELS)
    ticks.requested()
    filings = landing_in_flight(instance, STREAMS["filings"].landing_job)
    landing_in_flight(instance, STREAMS[COMPANIES].landing_job)
    materialized(instance, "company_house_officers_stream")
    assert ticks.requested() == set()
    materialized(instance, "company_house_filings_stream")
    instance.report_dagster_event(dg.DagsterEvent(dg.DagsterEventType.RUN_SUCCESS.value, filings.job_name), filings.run_id)
    assert ticks.requested() == {"officers_current", "filings_current"}


def test_a_stream_model_waits_at_most_its_bound_for_landings_that_never_settle(ticks: Ticks):
    instance = ticks.instance
    materialized(instance, "company_house_bulk", *DBT_MODELS)
    ticks.requested()
    landing_in_flight(instance, STREAMS["filings"].landing_job)
    materialized(instance, "company_house_officers_stream")
    now = datetime.now(timezone.utc)
    assert ticks.requested(now) == set()
    later = now + timedelta(seconds=STREAM_MODELS_MAX_WAIT_SECONDS + 1)
    assert ticks.requested(later) == {"officers_current"}


def test_one_evaluation_asks_once_whether_a_landing_is_in_flight(ticks: Ticks, monkeypatch: pytest.MonkeyPatch):
    """Every stream model's condition asks whether another stream's landing is in flight: one query
    of the runs per evaluation, not one per model; the next evaluation asks again (never an earlier answer)."""
    instance = ticks.instance
    materialized(instance, "company_house_bulk", *DBT_MODELS)
    ticks.requested()
    filings = landing_in_flight(instance, STREAMS["filings"].landing_job)
    materialized(instance, *(spec.landing_table for spec in STREAMS.values() if spec.name != COMPANIES))
    queries = []
    get_runs = instance.get_runs

    def counted(*args, **kwargs):
        queries.append((args, kwargs))
        return get_runs(*args, **kwargs)

    monkeypatch.setattr(instance, "get_runs", counted)
    assert ticks.requested() == set()  # every stream model waits for the filings landing
    assert len(queries) == 1
    instance.report_dagster_event(dg.DagsterEvent(dg.DagsterEventType.RUN_SUCCESS.value, filings.job_name), filings.run_id)
    assert ticks.requested() == STREAM_DBT_MODELS  # the landing ended: all of them, in one run
    assert len(queries) == 2


def test_sensor_is_running_by_default_and_policies_are_the_tutorials_deadlines():
    assert dbt_automation_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    graph = defs.resolve_asset_graph()
    targeted = {k.to_user_string() for k in dbt_automation_sensor.asset_selection.resolve(graph)}
    assert targeted == DBT_MODELS | STREAM_DBT_MODELS | {"company_house_bulk"}
    specs = {s.key.to_user_string(): s for s in defs.resolve_all_asset_specs()}
    assert specs["snapshot_streamed_data"].freshness_policy == SNAPSHOT_FRESHNESS
    for model in DBT_MODELS - {"snapshot_streamed_data"}:
        assert specs[model].freshness_policy == CORE_FRESHNESS
    assert {d.asset_key.to_user_string() for d in specs["snapshot_streamed_data"].deps} == {"company_house_stream"}
    assert "company_house_bulk" in {d.asset_key.to_user_string() for d in specs["company_house_core"].deps}


def test_asset_graph_is_acyclic_with_the_watermark_downstream_of_the_core():
    graph = defs.resolve_asset_graph()
    snapshot = dg.AssetKey("snapshot_streamed_data")
    watermark = dg.AssetKey("get_last_timestamp")
    assert watermark not in graph.get(snapshot).parent_keys  # read without ref(): no cycle
    assert dg.AssetKey("company_house_core") in graph.get(watermark).parent_keys
    graph.toposorted_asset_keys  # raises on a cycle


def test_fresh_instance_requests_the_first_bulk_file_then_every_model(ticks: Ticks):
    """Stream data lands before any bulk file is loaded: the first file is requested (its month only),
    and the models wait for it, then go together (nothing may run without the core: a watermark
    advanced without the core would skip that batch for ever)."""
    instance = ticks.instance
    materialized(instance, "company_house_stream")
    result = dg.evaluate_automation_conditions(defs=ticks.defs, instance=instance, cursor=ticks.cursor)
    ticks.cursor = result.cursor
    assert {key.to_user_string(): subset for key, subset in result._requested_partitions_by_asset_key.items()} == {
        BULK_TABLE: {SAMPLE_FILE_DATE.isoformat()}
    }
    materialized(instance, BULK_TABLE)
    assert ticks.requested() == DBT_MODELS


def test_a_rebuilt_core_alone_does_not_retrigger_the_models(ticks: Ticks):
    instance = ticks.instance
    materialized(instance, "company_house_stream")
    materialized(instance, "company_house_bulk", *DBT_MODELS)
    ticks.requested()
    materialized(instance, "company_house_core")
    assert ticks.requested() == set()


def test_the_models_are_one_execution_set():
    """The watermark is only true for a snapshot the core merged in the same dbt build."""
    graph = defs.resolve_asset_graph()
    unit = graph.get(dg.AssetKey("get_last_timestamp")).execution_set_entity_keys
    assert {k.to_user_string() for k in unit if isinstance(k, dg.AssetKey)} == DBT_MODELS
    with pytest.raises(Exception) as refused:
        dg.materialize([ch_dbt_models], selection=["snapshot_streamed_data", "get_last_timestamp"],
                       resources={"dbt": defs.resources["dbt"]})  # fmt: skip
    assert "does not support subsetting" in f"{refused.value} {refused.value.__cause__}"
