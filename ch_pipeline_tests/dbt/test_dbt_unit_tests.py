"""The dbt unit tests of the core's merge rules run here, and only here: never in the pipeline's builds.

`CH_DBT_UNIT_TESTS=true dbt test --select test_type:unit` (ch_dbt/models/core/company_house_core_unit_tests.yml: an older event
never overwrites a newer one, a deletion wins, a restore after a deletion, the first build's event
order) against a real DuckDB warehouse: dbt reads the column types of a unit test's inputs from their
tables, so the module first builds them with the Dagster dbt assets, twice (the first build, then an
incremental one over a landed batch, both under the core's contract). Those builds are the other half
of the proof: their dbt results hold the models and data tests, and no unit test, although their
manifest has them. Their materializations carry row counts and column types.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from ch_pipeline.defs.dbt import ch_dbt_models, dbt_resource
from ch_pipeline_tests.dbt.conftest import DBT_MODELS, configure_environment, load_bulk
from ch_pipeline_tests.dbt.history import History, create_stream_table, expected_core, land, parse_bulk_csv, read_core

UNIT_TESTS = {
    "core_an_older_event_never_overwrites_a_newer_one",
    "core_a_deletion_wins",
    "core_a_restore_after_a_deletion",
    "core_first_build_takes_the_newest_event_of_each_company",
}


@dataclass
class Build:
    run_results: list[dict]  # dbt's run_results.json of the Dagster build
    unit_tests_in_manifest: set[str]  # the unit tests in the manifest of that build
    materializations: dict[str, dg.AssetMaterialization]


@dataclass
class Warehouse:
    root: Path
    builds: list[Build]
    core_is_the_truth: bool


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory, bulk_csv: Path):
    root = tmp_path_factory.mktemp("unit_tests")
    with pytest.MonkeyPatch.context() as env:
        db = configure_environment(env, root)
        # The Dagster builds write their dbt artifacts here (settings.dbt_build_target_path).
        env.setenv("DBT_TARGET_PATH", str(root / "target"))
        # The unit tests are disabled unless asked for (ch_dbt/dbt_project.yml); asked for here, also
        # in the Dagster builds, so that those builds leave them out by their own exclusion.
        env.setenv("CH_DBT_UNIT_TESTS", "true")
        create_stream_table(db)
        instance = dg.DagsterInstance.ephemeral()
        load_bulk(db, bulk_csv, instance)
        bulk = parse_bulk_csv(bulk_csv)
        history = History(bulk, seed=5)

        builds = [dagster_build(instance, root)]  # the first build: bulk only
        events = history.batch_1()
        land(db, events, "batch-1")
        builds.append(dagster_build(instance, root))  # incremental, with the contract on its query
        yield Warehouse(root, builds, read_core(db) == expected_core(bulk, events))


def dagster_build(instance: dg.DagsterInstance, root: Path) -> Build:
    result = dg.materialize([ch_dbt_models], resources={"dbt": dbt_resource()}, instance=instance)
    assert result.success
    assert [e.check_name for e in result.get_asset_check_evaluations() if not e.passed] == []
    run_results = json.loads((root / "target" / "ch_dbt_models" / "run_results.json").read_text())["results"]
    manifest = json.loads((root / "target" / "ch_dbt_models" / "manifest.json").read_text())
    materializations = {e.asset_key.to_user_string(): e.event_specific_data.materialization for e in result.get_asset_materialization_events()}
    return Build(run_results, {u["name"] for u in manifest["unit_tests"].values()}, materializations)


def test_the_merge_rules_hold_as_dbt_unit_tests(warehouse, tmp_path: Path):
    state = warehouse
    invocation = dbt_resource().cli(["test", "--select", "test_type:unit"], raise_on_error=False, target_path=tmp_path)
    invocation.wait()
    results = invocation.get_artifact("run_results.json")["results"]
    ran = {r["unique_id"].split(".")[-1]: r["status"] for r in results}
    assert ran == {name: "pass" for name in UNIT_TESTS}, [r.get("message") for r in results if r["status"] != "pass"]
    assert all(r["unique_id"].startswith("unit_test.") for r in results)


def test_a_dagster_build_runs_no_unit_test(warehouse):
    state = warehouse
    for build in state.builds:
        assert build.unit_tests_in_manifest == UNIT_TESTS  # the project has them: the build left them out
        kinds = {r["unique_id"].split(".")[0] for r in build.run_results}
        assert kinds == {"model", "test"}
        assert {r["unique_id"].split(".")[-1] for r in build.run_results if r["unique_id"].startswith("model.")} == DBT_MODELS
    assert state.core_is_the_truth  # the contracted core, built incrementally, is still right


def test_the_ui_shows_the_core_columns_with_their_types():
    """From the models' yml (the contract's data types), on the asset itself: no query per build."""
    from ch_pipeline.definitions import defs

    specs = {spec.key.to_user_string(): spec for spec in defs.resolve_all_asset_specs()}
    columns = specs["company_house_core"].metadata["dagster/column_schema"].columns
    types = {c.name: (c.type or "").lower() for c in columns}
    assert "company_number" in types and all(types.values()), types
    assert types["last_kafka_offset"] == "bigint"
