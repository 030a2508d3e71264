"""The dbt models as Dagster assets, with their freshness promise and the automation that keeps it.

The tutorial ran three dbt Cloud jobs on cron offsets (snapshot at :00/:20/:40, core + watermark at
:10/:30/:50) so one finished before the next began. Here the lineage orders them instead: after new
stream partitions land, the automation sensor requests snapshot -> tombstones -> core -> watermark
in the same tick, so they run as one ``dbt build`` (the order inside it comes from the dbt DAG).
The old crons survive only as the deadlines of the freshness policies.
"""

import shutil
import sys
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets

from ch_pipeline.defs.metadata import ASSET_GROUP
from ch_pipeline.settings import env_or_default, sensor_interval_seconds
from ch_pipeline.warehouse.schema import BULK_TABLE, STREAM_TABLE

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "ch_dbt"
ch_dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)
SNAPSHOT_MODEL = "snapshot_streamed_data"
CORE_MODEL = "company_house_core"


def dbt_executable() -> str:
    """dbt beside this interpreter (the venv is often not on PATH, e.g. `.venv/bin/dagster dev`)."""
    beside = Path(sys.executable).parent / "dbt"
    return str(beside) if beside.exists() else (shutil.which("dbt") or "dbt")


def prepare_manifest(project: DbtProject = ch_dbt_project) -> Path:
    """The manifest ``@dbt_assets`` is built from, parsed whenever it is missing (a fresh clone:
    ``ch_dbt/target`` is not committed) or older than the project files (edits under ``dagster dev``)."""
    # Not project.prepare_if_dev(): it runs a bare `dbt`, which is not on PATH when the venv is not
    # activated (`.venv/bin/dagster dev`); this re-parses whenever a project file changed instead.
    if _manifest_is_stale(project):
        DbtCliResource(project_dir=project, dbt_executable=dbt_executable()).cli(
            ["parse", "--quiet"], target_path=project.target_path
        ).wait()
    return project.manifest_path


def _manifest_is_stale(project: DbtProject) -> bool:
    if not project.manifest_path.exists():
        return True
    sources = [project.project_dir / "dbt_project.yml", project.project_dir / "profiles.yml"]
    for folder in ("models", "macros", "tests"):
        sources.extend((project.project_dir / folder).rglob("*"))
    built = project.manifest_path.stat().st_mtime
    return any(path.stat().st_mtime > built for path in sources if path.is_file())


# Declarative automation (DESIGN §7, §11). The four models are one execution set (`as_one_unit`),
# so one condition decides for all of them; it sits on the core, the only model that reads both
# inputs. `eager()` never fires below a growing dynamic partition set (the newest stream partition
# exists, so counts as missing, before its run ends, and then it is in progress); this is eager()
# without those two guards on the stream: fire when the stream or the bulk table was updated, or the
# core is missing, once the stream has landed a partition (its table exists only then) and the bulk
# table exists or is requested in the same tick.
# "Handled" = requested or updated. Unlike since_last_handled(), the sensor's first evaluation does
# not count as handled, so data that landed before the sensor's first tick still triggers a build.
INPUTS = dg.AssetSelection.assets(STREAM_TABLE, BULK_TABLE)
handled = dg.AutomationCondition.newly_requested() | dg.AutomationCondition.newly_updated()
inputs_updated = dg.AutomationCondition.any_deps_match(
    dg.AutomationCondition.newly_updated() | dg.AutomationCondition.will_be_requested()
).allow(INPUTS)
stream_has_landed = dg.AutomationCondition.any_deps_match(~dg.AutomationCondition.missing()).allow(
    dg.AssetSelection.assets(STREAM_TABLE)
)
bulk_missing = dg.AutomationCondition.any_deps_missing().allow(dg.AssetSelection.assets(BULK_TABLE))
after_new_stream_data = (
    (dg.AutomationCondition.missing() | inputs_updated).since(handled)
    & ~dg.AutomationCondition.in_progress()
    & stream_has_landed
    & ~bulk_missing
).with_label("after new stream data")

# The promise the tutorial's crons made, as deadlines: by each :00/:20/:40 the snapshot was taken in
# the last 20 minutes; by each :10/:30/:50 the core and the watermark were rebuilt in the last 20
# minutes (i.e. no more than 20 minutes after the snapshot).
SNAPSHOT_FRESHNESS = dg.FreshnessPolicy.cron(deadline_cron="0,20,40 * * * *", lower_bound_delta=timedelta(minutes=20))
CORE_FRESHNESS = dg.FreshnessPolicy.cron(deadline_cron="10,30,50 * * * *", lower_bound_delta=timedelta(minutes=20))


class ChDbtTranslator(DagsterDbtTranslator):
    """dbt sources -> the assets that land them; models -> one asset each, named like the model."""

    SOURCE_ASSETS = {STREAM_TABLE: dg.AssetKey(STREAM_TABLE), BULK_TABLE: dg.AssetKey(BULK_TABLE)}

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            return self.SOURCE_ASSETS.get(dbt_resource_props["name"]) or super().get_asset_key(dbt_resource_props)
        return dg.AssetKey(dbt_resource_props["name"])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return ASSET_GROUP

    def get_automation_condition(self, dbt_resource_props: Mapping[str, Any]) -> dg.AutomationCondition | None:
        # The other models follow the core: they are in its execution set (see as_one_unit).
        return after_new_stream_data if dbt_resource_props["name"] == CORE_MODEL else None

    def get_asset_spec(self, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        if not unique_id.startswith("model."):
            return spec
        freshness = SNAPSHOT_FRESHNESS if spec.key == dg.AssetKey(SNAPSHOT_MODEL) else CORE_FRESHNESS
        return spec.replace_attributes(freshness_policy=freshness)


@dbt_assets(
    manifest=prepare_manifest(),
    project=ch_dbt_project,
    dagster_dbt_translator=ChDbtTranslator(),
    pool="duckdb",  # one DuckDB writer at a time (DESIGN §11)
    name="ch_dbt_models",
)
def _ch_dbt_models(context: dg.AssetExecutionContext, dbt: DbtCliResource):
    """``dbt build`` of the selected models: models and their tests (asset checks) in DAG order.

    A failed model or a failed error-severity test skips everything downstream, so the watermark
    never advances past a batch the core did not take.
    """
    yield from dbt.cli(["build"], context=context).stream()


def as_one_unit(assets: dg.AssetsDefinition) -> dg.AssetsDefinition:
    """The same dbt assets, materialized only all together (``@dbt_assets`` is always subsettable).

    The watermark is only true for a snapshot the core merged in the same ``dbt build``, so the four
    models form one execution set: any request for one of them (automation, a click in the UI)
    becomes a request for all four and their tests.
    """
    return dg.AssetsDefinition.dagster_internal_init(**{**assets.get_attributes_dict(), "can_subset": False})


ch_dbt_models = as_one_unit(_ch_dbt_models)


def dbt_resource() -> DbtCliResource:
    """The dbt CLI; the target comes from DBT_TARGET (default: CH_WAREHOUSE, see ch_dbt/profiles.yml)."""
    return DbtCliResource(
        project_dir=ch_dbt_project, dbt_executable=dbt_executable(), target=env_or_default("DBT_TARGET", None)
    )


dbt_automation_sensor = dg.AutomationConditionSensorDefinition(
    "ch_dbt_automation",
    target=dg.AssetSelection.assets(ch_dbt_models) | dg.AssetSelection.assets(BULK_TABLE),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=sensor_interval_seconds(30),
    description="Runs the dbt models after new stream partitions land (and loads the bulk snapshot when missing).",
)
