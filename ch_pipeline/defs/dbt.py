"""The dbt models as Dagster assets, with their freshness promise and the automation that keeps it.

The lineage orders the models: after new stream data lands, the automation sensor requests
snapshot -> tombstones -> core -> watermark in one tick, so they run as one ``dbt build`` (the order
inside it comes from the dbt DAG). Freshness policies are the deadlines (docs/architecture.md §7).
"""

import importlib.metadata
import os
import shutil
import sys
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets
from packaging import version

from ch_pipeline.defs.metadata import ASSET_GROUP
from ch_pipeline.defs.stream import IN_FLIGHT_STATUSES, ticks_every
from ch_pipeline.defs.streams import STREAM_LANDINGS, STREAMS_MINIMUM_INTERVAL_SECONDS
from ch_pipeline.settings import Settings, dbt_build_target_path, sensor_interval_seconds, streams_sensor_interval_seconds
from ch_pipeline.warehouse.schema import BULK_TABLE, CORE_MODEL, STREAM_TABLE

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "ch_dbt"
ch_dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)
SNAPSHOT_MODEL = "snapshot_streamed_data"
# The current-state models of the non-companies streams and the company overview (issue 15): their own
# @dbt_assets (ch_dbt_stream_models), never part of the companies' execution set.
STREAM_MODELS = "path:models/streams"
STREAM_SOURCES = "streams"  # the dbt source of the landing tables, one per stream ({default_topic}_stream)


def dbt_executable() -> str:
    """dbt beside this interpreter (the venv is often not on PATH, e.g. `.venv/bin/dagster dev`)."""
    beside = Path(sys.executable).parent / "dbt"
    return str(beside) if beside.exists() else (shutil.which("dbt") or "dbt")


def prepare_manifest(project: DbtProject = ch_dbt_project) -> Path:
    """The manifest ``@dbt_assets`` is built from, prepared by dagster-dbt (``DbtProject.preparer``:
    ``dbt deps`` when the project has packages, ``dbt parse``, a lock against concurrent loads)
    whenever it is missing (a fresh clone: ``ch_dbt/target`` is not committed) or older than a
    project file (an edit), wherever the code loads.

    ``DbtProject.prepare_if_dev()`` alone would not do: it prepares only under ``dagster dev``, so
    tests, the daemon, ``dg check defs`` and the code server would load a stale or missing manifest.
    The image ships a parsed manifest (Dockerfile), so there this parses nothing.
    """
    if _manifest_is_stale(project):
        with _dbt_on_path():
            project.preparer.prepare(project)
    return project.manifest_path


@contextmanager
def _dbt_on_path() -> Iterator[None]:
    """dagster-dbt's preparer runs ``dbt`` from PATH, which lacks the venv when it is not activated
    (`.venv/bin/dagster dev`, `.venv/bin/dg check defs`): put the interpreter's bin directory first."""
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([str(Path(dbt_executable()).parent), path])
    try:
        yield
    finally:
        os.environ["PATH"] = path


def _manifest_is_stale(project: DbtProject) -> bool:
    if not project.manifest_path.exists():
        return True
    sources = [project.project_dir / "dbt_project.yml", project.project_dir / "profiles.yml"]
    for folder in ("models", "macros", "tests"):
        sources.extend((project.project_dir / folder).rglob("*"))
    built = project.manifest_path.stat().st_mtime
    return any(path.stat().st_mtime > built for path in sources if path.is_file())


# Declarative automation (docs/architecture.md §7). The five models are one execution set
# (`as_one_unit`), so one condition decides for all of them; it sits on the core, the only model
# that reads both inputs. `eager()` never fires below a growing dynamic partition set (the newest
# stream partition exists, so counts as missing, before its run ends, and then it is in progress).
# Nor can the trigger be an event reset by `.since(newly_requested | newly_updated)`: a landing that
# waited for the duckdb pool behind a build ends 1-5 s after it, its update and the build's reset
# fall in the same evaluation, the reset wins and the landing never reaches the core. The trigger is
# therefore a comparison of recorded facts, true until a build has seen the data:
INPUTS = (STREAM_TABLE, BULK_TABLE)


class InputLandedAfterLastBuild(dg.AutomationCondition):
    """True while a stream partition or the bulk table was materialized after the latest build of
    this asset started (or it was never built).

    A build reads every input committed before it started, so an input materialized earlier is in
    it; one materialized later may not be, and keeps this true until a build starts after it. At
    worst that costs one build too many, never a lost one. A build that failed counts as having
    started: run retries re-run it, and a build that keeps failing does not loop every tick. Except
    a build abandoned after its worker died (no step failed: SIGKILL, OOM, its code server gone)
    once run retries gave up on it: nothing says it took anything, and if no landing follows,
    nothing else would ever build the core (found by the daemon crash suite,
    ch_pipeline_tests/daemon).
    """

    @property
    def name(self) -> str:
        return "input_landed_after_last_build"

    def input_keys(self, context: dg.AutomationContext) -> list[dg.AssetKey]:
        return [dg.AssetKey(name) for name in INPUTS]

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        instance = context.asset_graph_view.instance
        records = {r.asset_entry.asset_key: r.asset_entry for r in instance.get_asset_records([context.key, *self.input_keys(context)])}
        newest_input = max(
            (entry.last_materialization_record for key, entry in records.items()
             if key != context.key and entry.last_materialization_record),
            key=lambda record: record.timestamp,
            default=None,
        )  # fmt: skip
        own = records.get(context.key)
        last_build = _last_build_started(instance, own)
        landed_after = (
            newest_input is not None
            and (last_build is None or newest_input.timestamp > last_build)
            and not _built_after_in_the_same_run(newest_input, own)
        )
        return dg.AutomationResult(context=context, true_subset=context.candidate_subset if landed_after else context.get_empty_subset())


class ParentMaterializedAfterLastBuild(InputLandedAfterLastBuild):
    """The same rule over the asset's own upstream assets (its parents in the graph): true while one
    of them was materialized after the latest build of this asset started. The stream models' trigger:
    a `*_current` model after its landing table, company_overview after the core or a current model."""

    @property
    def name(self) -> str:
        return "parent_materialized_after_last_build"

    def input_keys(self, context: dg.AutomationContext) -> list[dg.AssetKey]:
        return sorted(context.asset_graph.get(context.key).parent_keys)


class StreamLandingsSettled(dg.AutomationCondition):
    """True while no landing of the other streams is queued or running, or once the oldest landing of
    this asset's parents that no build has seen is ``max_wait_seconds`` old.

    The eight other streams' sensors tick together, and their landings take turns in the duckdb
    pool: without this, each landing would be followed by a dbt run of its own model (8 runs of ~5 s
    and 3 CPU-seconds each), with it the models of the whole round are built in one run. The bound
    keeps a model fresh when landings never stop (a backlog, a slow machine). Companies' landings do
    not count: they feed the core, and its own condition."""

    def __init__(self, max_wait_seconds: float) -> None:
        super().__init__()
        self._max_wait_seconds = max_wait_seconds

    @property
    def name(self) -> str:
        return f"other streams' landings settled (or waited {self._max_wait_seconds:g} s)"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        instance = context.asset_graph_view.instance
        ready = not _a_stream_landing_in_flight(context) or self._waited_long_enough(context, instance)
        return dg.AutomationResult(context=context, true_subset=context.candidate_subset if ready else context.get_empty_subset())

    def _waited_long_enough(self, context: dg.AutomationContext, instance: dg.DagsterInstance) -> bool:
        records = {r.asset_entry.asset_key: r.asset_entry for r in instance.get_asset_records([context.key])}
        last_build = _last_build_started(instance, records.get(context.key)) or 0.0
        oldest_unseen = [
            found.records[0].timestamp
            for parent in context.asset_graph.get(context.key).parent_keys
            if (found := instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=parent, after_timestamp=last_build), limit=1, ascending=True)).records
        ]  # fmt: skip
        return bool(oldest_unseen) and context.evaluation_time.timestamp() - min(oldest_unseen) >= self._max_wait_seconds


OTHER_STREAM_LANDING_JOBS = frozenset(landing.job.name for landing in STREAM_LANDINGS.values())


# Whether a landing of the other streams is in flight, per evaluation: the same for every stream model
# it decides, so the runs are queried once per tick, not once per model. Keyed by the evaluation's
# AssetGraphView, which Dagster creates anew for every evaluation (it holds the evaluation time and
# the instance), so no evaluation sees an earlier one's answer; weak, so it goes with its evaluation.
_LANDING_IN_FLIGHT_BY_EVALUATION: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()


def _a_stream_landing_in_flight(context: dg.AutomationContext) -> bool:
    evaluation = context.asset_graph_view
    if evaluation not in _LANDING_IN_FLIGHT_BY_EVALUATION:
        runs = evaluation.instance.get_runs(filters=dg.RunsFilter(statuses=IN_FLIGHT_STATUSES))
        _LANDING_IN_FLIGHT_BY_EVALUATION[evaluation] = any(run.job_name in OTHER_STREAM_LANDING_JOBS for run in runs)
    return _LANDING_IN_FLIGHT_BY_EVALUATION[evaluation]


def _built_after_in_the_same_run(input_record, entry) -> bool:
    """Whether the input's materialization was followed by this asset's in the same run: the companies
    landing run that builds the core after landing (defs/stream.py), whose own start precedes the landing."""
    built = entry.last_materialization_record if entry else None
    return bool(built and built.run_id and built.run_id == input_record.run_id and built.timestamp > input_record.timestamp)


def _last_build_started(instance: dg.DagsterInstance, entry) -> float | None:
    """When the latest run planned to build the asset started (queued: created); a materialization
    reported without a run (by hand) counts as a build at its own time."""
    if entry is None:
        return None
    times = []
    # The latest run that materialized it, or that is planned to (queued or in flight).
    for run_id in {entry.last_run_id, entry.last_planned_materialization_run_id} - {None, ""}:
        run = instance.get_run_record_by_id(run_id)
        if run is not None and not _abandoned_after_its_worker_died(run.dagster_run):
            times.append(run.start_time or run.create_timestamp.timestamp())
    if entry.last_materialization_record and not entry.last_materialization_record.run_id:
        times.append(entry.last_materialization_record.timestamp)
    return max(times, default=None)


# Run tags Dagster sets on a failed run: whether run retries will re-launch it, and why it failed.
WILL_RETRY_TAG = "dagster/will_retry"
FAILURE_REASON_TAG = "dagster/failure_reason"


def _abandoned_after_its_worker_died(run: dg.DagsterRun) -> bool:
    """Failed without a step failure (its worker process died, or its launch failed), and run
    retries will not re-launch it (max_retries reached, or the retry could not be created)."""
    return (
        run.status == dg.DagsterRunStatus.FAILURE
        and run.tags.get(WILL_RETRY_TAG) == "false"
        and run.tags.get(FAILURE_REASON_TAG) != "STEP_FAILURE"
    )


stream_has_landed = dg.AutomationCondition.any_deps_match(~dg.AutomationCondition.missing()).allow(
    dg.AssetSelection.assets(STREAM_TABLE)
)
# A bulk file (any month) is loaded: the core's first build starts from it. (Requested in the same
# tick is not enough: a monthly partition and the unpartitioned models never share a run.)
bulk_file_loaded = dg.AutomationCondition.any_deps_match(~dg.AutomationCondition.missing()).allow(
    dg.AssetSelection.assets(BULK_TABLE)
)
after_new_stream_data = (
    InputLandedAfterLastBuild() & ~dg.AutomationCondition.in_progress() & stream_has_landed & bulk_file_loaded
).with_label("after new stream data")

# A stream model builds after its inputs changed, one build at a time per model. Each model decides on
# its own (the stream models are subsettable): a landing of the officers stream rebuilds
# officers_current, and then company_overview, not the other streams' models.
# Landings of one round (the other streams' sensors tick together) are awaited, up to two of their
# sensor intervals and at least two minutes (a round of eight ~5 s landings, with room for a busy
# machine), so that one run builds the round's models.
STREAM_MODELS_MAX_WAIT_SECONDS = max(2 * streams_sensor_interval_seconds(STREAMS_MINIMUM_INTERVAL_SECONDS), 120)
after_new_input = (
    ParentMaterializedAfterLastBuild() & ~dg.AutomationCondition.in_progress() & StreamLandingsSettled(STREAM_MODELS_MAX_WAIT_SECONDS)
).with_label("after new input, once the round's landings settled")
# company_overview: only once every model it reads exists (or is requested in the same tick). It selects
# from each of them, so a build while one stream has never landed fails ("Table with name pscs_current
# does not exist") and is retried in vain: a quiet stream, or one whose producer is down, in production.
OVERVIEW_MODEL = "company_overview"
overview_after_new_input = (
    ParentMaterializedAfterLastBuild()
    & ~dg.AutomationCondition.in_progress()
    & StreamLandingsSettled(STREAM_MODELS_MAX_WAIT_SECONDS)
    & ~dg.AutomationCondition.any_deps_missing()
).with_label("after new input, once every model it reads exists and the round's landings settled")

# The promise the tutorial's crons made, as deadlines: by each :00/:20/:40 the snapshot was taken in
# the last 20 minutes; by each :10/:30/:50 the core and the watermark were rebuilt in the last 20
# minutes (i.e. no more than 20 minutes after the snapshot).
SNAPSHOT_FRESHNESS = dg.FreshnessPolicy.cron(deadline_cron="0,20,40 * * * *", lower_bound_delta=timedelta(minutes=20))
CORE_FRESHNESS = dg.FreshnessPolicy.cron(deadline_cron="10,30,50 * * * *", lower_bound_delta=timedelta(minutes=20))


class ChDbtTranslator(DagsterDbtTranslator):
    """dbt sources -> the assets that land them (a stream's landing table: the asset of the same name);
    models -> one asset each, named like the model; a stream's current-state model in its stream's
    group, the group of its landing (e.g. officers_current: company_house_officers, ch_pipeline/defs/streams.py)."""

    SOURCE_ASSETS = {STREAM_TABLE: dg.AssetKey(STREAM_TABLE), BULK_TABLE: dg.AssetKey(BULK_TABLE)}

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            if dbt_resource_props.get("source_name") == STREAM_SOURCES:
                return dg.AssetKey(dbt_resource_props["name"])
            return self.SOURCE_ASSETS.get(dbt_resource_props["name"]) or super().get_asset_key(dbt_resource_props)
        return dg.AssetKey(dbt_resource_props["name"])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        name = dbt_resource_props["name"]
        if is_stream_model(dbt_resource_props) and name.endswith("_current"):
            return f"company_house_{name.removesuffix('_current')}"
        return ASSET_GROUP

    def get_automation_condition(self, dbt_resource_props: Mapping[str, Any]) -> dg.AutomationCondition | None:
        if is_stream_model(dbt_resource_props):
            return overview_after_new_input if dbt_resource_props["name"] == OVERVIEW_MODEL else after_new_input
        # The other models follow the core: they are in its execution set (see as_one_unit).
        return after_new_stream_data if dbt_resource_props["name"] == CORE_MODEL else None

    def get_asset_spec(self, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        # The stream models promise no deadline yet: how often each stream lands is its landing's affair.
        if not unique_id.startswith("model.") or is_stream_model(manifest["nodes"][unique_id]):
            return spec
        freshness = SNAPSHOT_FRESHNESS if spec.key == dg.AssetKey(SNAPSHOT_MODEL) else CORE_FRESHNESS
        return spec.replace_attributes(freshness_policy=freshness)


def is_stream_model(dbt_resource_props: Mapping[str, Any]) -> bool:
    """A model of ch_dbt/models/streams (its fqn: project, folder, ..., name)."""
    fqn = dbt_resource_props.get("fqn") or []
    return dbt_resource_props.get("resource_type") == "model" and len(fqn) > 2 and fqn[1] == "streams"


# The dbt unit tests (ch_dbt/models/core/*unit_tests.yml) check the SQL, not the data: they run in the
# test suite (ch_pipeline_tests/dbt/test_dbt_unit_tests.py), never in the pipeline's builds, where they
# would delay every event on its way to the core (they are also disabled unless CH_DBT_UNIT_TESTS=true,
# ch_dbt/dbt_project.yml).
DBT_BUILD_ARGS = ["build", "--exclude-resource-type", "unit_test"]


def as_one_unit(assets: dg.AssetsDefinition) -> dg.AssetsDefinition:
    """The same dbt assets, materialized only all together (``@dbt_assets`` is always subsettable).

    The watermark is only true for a snapshot the core merged in the same ``dbt build``, so the five
    models form one execution set: any request for one of them (automation, a click in the UI)
    becomes a request for all five and their tests.
    """
    return dg.AssetsDefinition.dagster_internal_init(**{**assets.get_attributes_dict(), "can_subset": False})


# Prepared once for both sets of dbt assets: one staleness check of the project per code load.
DBT_MANIFEST = prepare_manifest()


# Applied as a decorator so that the module holds only the one-unit assets: `load_from_defs_folder`
# collects every module-level definition, and the subsettable twin would define the keys twice.
@as_one_unit
@dbt_assets(
    manifest=DBT_MANIFEST,
    project=ch_dbt_project,
    dagster_dbt_translator=ChDbtTranslator(),
    pool="duckdb",  # one DuckDB writer at a time (docs/architecture.md §11)
    name="ch_dbt_models",
    exclude=STREAM_MODELS,  # the stream models are ch_dbt_stream_models
)
def ch_dbt_models(context: dg.AssetExecutionContext, dbt: DbtCliResource):
    """``dbt build`` of the selected models: models and their tests (asset checks) in DAG order.

    A failed model or a failed error-severity test skips everything downstream, so the watermark
    never advances past a batch the core did not take. Column types reach the UI from the models'
    yml (the contract's data types, docs/architecture.md §6). Row counts are not fetched: on DuckDB
    that needs the file dbt just released, opened in this process, and holds every materialization
    event until dbt has exited (which also moves the daemon suite's fault points).
    """
    bulk_file = bulk_file_in_force(context.instance)
    for event in dbt.cli(DBT_BUILD_ARGS, context=context, target_path=dbt_build_target_path()).stream():
        if bulk_file and isinstance(event, dg.Output) and context.asset_key_for_output(event.output_name) == dg.AssetKey(CORE_MODEL):
            event = event.with_metadata({**event.metadata, "bulk_file_date": dg.MetadataValue.text(bulk_file)})
        yield event


def bulk_file_in_force(instance: dg.DagsterInstance) -> str | None:
    """The month of the bulk file loaded last: the file this build's core agrees with (the build
    reconciles the core with the bulk table when it holds a newer file, ch_dbt/macros/bulk_file.sql)."""
    latest = instance.get_latest_materialization_event(dg.AssetKey(BULK_TABLE))
    return latest.dagster_event.partition if latest and latest.dagster_event else None


@dbt_assets(
    manifest=DBT_MANIFEST,
    project=ch_dbt_project,
    dagster_dbt_translator=ChDbtTranslator(),
    select=STREAM_MODELS,
    pool="duckdb",  # one DuckDB writer at a time (docs/architecture.md §11)
    name="ch_dbt_stream_models",
)
def ch_dbt_stream_models(context: dg.AssetExecutionContext, dbt: DbtCliResource):
    """``dbt build`` of the selected stream models (issue 15): each `*_current` model after its landing
    table, company_overview after them and the core. Subsettable: each model is built when its own
    inputs changed. Its own target folder beside the companies build's (both reuse theirs)."""
    target_path = dbt_build_target_path().with_name("ch_dbt_stream_models")
    yield from dbt.cli(DBT_BUILD_ARGS, context=context, target_path=target_path).stream()


class DbtCli(DbtCliResource):
    """dagster-dbt's dbt CLI, writing to one reused target folder, without two costs it pays on every
    run for features these assets do not use. A Dagster-launched build of a 100k-row core took 11-12 s
    with them and takes 6-7 s without, dbt's own run ~1.5-2 s of it (benchmarks/dbt_increment.py):

    - ``dbt --version`` (~4.7 s on 2 cores: a whole dbt start-up plus a PyPI look-up of the latest
      release), only to tell dbt Core from dbt Fusion: the dbt beside this interpreter is the
      dbt-core installed here, so its version is read from the package metadata;
    - a dbt adapter opened inside the run process (~1.9 s: dbt's imports, profile and macros), used
      only to fetch row counts or column metadata, which ``ch_dbt_models`` does not.

    These override private methods of dagster-dbt (pinned in requirements.lock);
    ch_pipeline_tests/dbt/test_dbt_cli_resource.py checks what they assume.
    """

    @cached_property
    def _cli_version(self) -> version.Version:
        if Path(self.dbt_executable).parent == Path(sys.executable).parent:
            return version.parse(importlib.metadata.version("dbt-core"))
        return super()._cli_version  # another dbt (PATH): ask it

    def _initialize_dbt_core_adapter(self, args):
        return None

    def _get_unique_target_path(self, *, context=None) -> Path:
        """Every invocation writes to the one reused folder (``dbt_build_target_path``), never a new
        one: dagster-dbt's default leaves ~2 MB under ``ch_dbt/target`` per invocation, forever."""
        return dbt_build_target_path()


def dbt_resource() -> DbtCliResource:
    """The dbt CLI; the target comes from DBT_TARGET (default: CH_WAREHOUSE, see ch_dbt/profiles.yml).

    The target is resolved here, when the code location loads, not left as ``EnvVar``: the resource
    is served as a fixed resource (``fixed_resource``, no run config), which never resolves an
    ``EnvVar``, so dbt got the literal ``--target DBT_TARGET`` and every build failed.
    """
    return DbtCli(project_dir=ch_dbt_project, dbt_executable=dbt_executable(), target=Settings.from_env().dbt_target)


dbt_automation_sensor = dg.AutomationConditionSensorDefinition(
    "ch_dbt_automation",
    target=dg.AssetSelection.assets(ch_dbt_models) | dg.AssetSelection.assets(ch_dbt_stream_models) | dg.AssetSelection.assets(BULK_TABLE),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=ticks_every(sensor_interval_seconds(30)),
    description="Runs the dbt models after new stream data lands or a bulk file is loaded (and loads the first bulk file); "
    "each stream's current-state model after its landing table.",
    # The core's condition reads the instance (InputLandedAfterLastBuild): it runs where the code is.
    use_user_code_server=True,
    # Its runs (the bulk load, the core's builds, the stream models) go before the other streams'
    # landings, like the companies landings: the first bulk load waited behind a round of eight.
    run_tags={"dagster/priority": "1"},
)
