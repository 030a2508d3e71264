"""Declarative automation of the dbt assets, evaluated against a real Dagster instance.

Materializations are recorded in the instance as the stream and bulk runs would record them; the
conditions are the ones in ch_pipeline.definitions.
"""

from __future__ import annotations

import dagster as dg
import pytest

from ch_pipeline.definitions import defs
from ch_pipeline.defs.dbt import CORE_FRESHNESS, SNAPSHOT_FRESHNESS, ch_dbt_models, dbt_automation_sensor, dbt_resource
from ch_pipeline.defs.stream import stream_partitions
from ch_pipeline_tests.dbt.conftest import configure_environment, load_bulk
from ch_pipeline_tests.dbt.history import create_stream_table

DBT_MODELS = {"snapshot_streamed_data", "company_house_deletions", "company_house_core", "get_last_timestamp"}


class Ticks:
    """Successive automation ticks sharing a cursor, like the sensor's."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self.cursor = None

    def requested(self) -> set[str]:
        result = dg.evaluate_automation_conditions(defs=defs, instance=self.instance, cursor=self.cursor)
        self.cursor = result.cursor
        return {r.key.to_user_string() for r in result.results if r.true_subset.size > 0}


def materialized(instance: dg.DagsterInstance, *keys: str, partition: str | None = None) -> None:
    for key in keys:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition=partition))


@pytest.fixture
def ticks():
    with dg.instance_for_test() as instance:
        yield Ticks(instance)


def test_bulk_first_then_models_after_each_new_stream_partition(ticks: Ticks, tmp_path, monkeypatch, bulk_csv):
    """Real bulk and dbt runs for the first build (all four models in one run, as the sensor launches them)."""
    instance = ticks.instance
    db = configure_environment(monkeypatch, tmp_path)
    create_stream_table(db)

    def run_models() -> None:
        assert dg.materialize([ch_dbt_models], resources={"dbt": dbt_resource()}, instance=instance).success

    # Nothing exists: the bulk snapshot is loaded first; the models wait for it (the core starts from it).
    assert ticks.requested() == {"company_house_bulk"}
    load_bulk(db, bulk_csv, instance)
    assert ticks.requested() == DBT_MODELS  # first build, all four in one tick
    run_models()
    assert ticks.requested() == set()  # nothing new: nothing runs, and a run does not retrigger itself

    # A stream partition lands: snapshot -> tombstones -> core -> watermark, all in the same tick.
    instance.add_dynamic_partitions(stream_partitions.name, ["p0:0-99"])
    materialized(instance, "company_house_stream", partition="p0:0-99")
    assert ticks.requested() == DBT_MODELS
    materialized(instance, *DBT_MODELS)
    assert ticks.requested() == set()


def test_models_run_while_a_newer_stream_partition_is_still_landing(ticks: Ticks):
    """DESIGN §11: eager() never fired here (the newest partition counts as missing while its run is
    in flight); the condition used fires on the partition that did land."""
    instance = ticks.instance
    materialized(instance, "company_house_bulk", *DBT_MODELS)
    ticks.requested()
    instance.add_dynamic_partitions(stream_partitions.name, ["p0:0-99", "p0:100-199"])
    materialized(instance, "company_house_stream", partition="p0:0-99")  # p0:100-199 not landed yet
    assert ticks.requested() == DBT_MODELS

    plain_eager = dg.AutomationCondition.eager()
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey("snapshot_streamed_data")).automation_condition != plain_eager


def test_sensor_is_running_by_default_and_policies_are_the_tutorials_deadlines():
    assert dbt_automation_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    graph = defs.resolve_asset_graph()
    targeted = {k.to_user_string() for k in dbt_automation_sensor.asset_selection.resolve(graph)}
    assert targeted == DBT_MODELS | {"company_house_bulk"}
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
