"""Issue 18: the production topology of docker-compose.yml, run for real without Docker.

The services of the compose file that run our image (dagster-migrate, kafka-topic, ch-pipeline-code,
dagster-webserver, dagster-daemon, and a producer per Companies House stream) run as local processes with the commands, env files,
``environment:`` and ``depends_on`` conditions read from the compose file, on a throwaway Postgres
(deploy/dagster.yaml: run, event log and schedule storage, QueuedRunCoordinator, run monitoring,
run retries, compute logs). The local broker stands in for Kafka, the replay server for the
Companies House stream, DuckDB for BigQuery (the README's self-contained stack). No test code lands,
requests or launches anything: the daemon does, through the code server. The tests run in order
on one stack (module fixture): the run-worker kill happens while the stream is landing.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import dagster as dg
import psutil
import psycopg2
import pytest
import requests
from dagster._core.events import DagsterEventType
from dagster._core.scheduler.instigation import InstigatorType, TickStatus
from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter
from dagster._core.storage.tags import PARENT_RUN_ID_TAG, SENSOR_NAME_TAG

from ch_pipeline.companies_house.streams import COMPANIES, STREAMS
from ch_pipeline.defs.stream import OFFSETS_TAG
from ch_pipeline.kafka.checkpoint import read_checkpoint
from ch_pipeline.kafka.offsets import KafkaUnavailable, probe_offsets
from ch_pipeline.demo_verdict import compare_core
from ch_pipeline.demo_verdict import compare_stream_model
from ch_pipeline.production_stack import PRODUCERS, SERVICES
from ch_pipeline_tests.production.conftest import FLOWING, FLOWING_EVENTS, STREAM_EVENTS

pytestmark = pytest.mark.timeout(300)

LOCATION = "ch_pipeline"
LANDING_JOB = STREAMS[COMPANIES].landing_job
KAFKA_SENSOR, AUTOMATION_SENSOR = STREAMS[COMPANIES].kafka_sensor, "ch_dbt_automation"
RETENTION_SENSOR = "dagster_history_retention"
# One Kafka sensor per other Companies House stream too (ch_pipeline/defs/streams.py); they skip while
# their topic does not exist.
STREAM_SENSORS = tuple(spec.kafka_sensor for spec in STREAMS.values() if spec.name != COMPANIES)
SENSORS = (KAFKA_SENSOR, AUTOMATION_SENSOR, RETENTION_SENSOR, *STREAM_SENSORS)
IN_FLIGHT = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED,
             DagsterRunStatus.CANCELING]  # fmt: skip
# deploy/dagster.yaml: run monitoring polls every 30 s, frees a dead run's pool slot 30 s after it ended.
MONITORING_BOUND = 150
SETTLE_BOUND = 210


def wait(what: str, condition, timeout: float, stack, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        stack_alive(stack)
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout:.0f}s\n{diagnostics(stack)}")
        time.sleep(interval)


def stack_alive(stack) -> None:
    for name in ("ch-pipeline-code", "dagster-webserver", "dagster-daemon", *PRODUCERS):
        service = stack.services[name]
        stopped = name in PRODUCERS and service.returncode == 0  # stopped by the last test
        assert service.returncode is None or stopped, f"{name} exited with code {service.returncode}:\n{service.tail()}"


def diagnostics(stack) -> str:
    return "\n".join(f"--- {name}:\n{service.tail(15)}" for name, service in stack.services.items())


def graphql(stack, query: str, **variables) -> dict:
    response = requests.post(f"{stack.web_url}/graphql", json={"query": query, "variables": variables}, timeout=60)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


def landing_runs(instance) -> list[dg.DagsterRun]:
    return list(instance.get_runs(filters=RunsFilter(job_name=LANDING_JOB)))


def worker_pid(instance, run_id: str) -> int | None:
    """The run worker's pid, from the engine event the code server's run process writes first."""
    for record in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        message = record.dagster_event.message or ""
        if message.startswith("Started process for run (pid: "):
            return int(message.split("pid: ")[1].rstrip(")."))
    return None


def sql(stack, query: str) -> list[tuple]:
    env = stack.postgres_env()
    with psycopg2.connect(host=env["POSTGRES_HOST"], port=stack.postgres.port, user=env["POSTGRES_USER"],
                          password=env["POSTGRES_PASSWORD"], dbname=env["POSTGRES_DB"]) as connection:  # fmt: skip
        with connection.cursor() as cursor:
            cursor.execute(query)
            return cursor.fetchall()


# --- the services come up ------------------------------------------------------------------------


def test_every_service_ran_the_command_of_the_compose_file(production_stack):
    for name in SERVICES:
        service = production_stack.services[name]
        command = production_stack.compose["services"][name]["command"]
        assert Path(service.argv[0]).name == command[0]
        assert len(service.argv) == len(command)
    assert production_stack.services["dagster-migrate"].returncode == 0
    assert production_stack.services["kafka-topic"].returncode == 0
    created = production_stack.services["kafka-topic"].log.read_text()
    for producer in PRODUCERS:
        assert f"topic {production_stack.stream_target(producer).topic}: created" in created


def test_a_producer_service_per_stream_each_holding_its_own_connection(production_stack):
    """The compose file's producers are the catalogue's streams, each followed by its own process;
    nine connections on one key, within the replay server's (and Companies House's) limit of ten."""
    assert sorted(PRODUCERS.values()) == sorted(STREAMS)
    targets = {producer: production_stack.stream_target(producer) for producer in PRODUCERS}
    assert len({t.topic for t in targets.values()}) == len({t.checkpoint_path for t in targets.values()}) == len(STREAMS)
    wait("every producer connected", lambda: production_stack.replay.open_connections() == len(PRODUCERS), 60, production_stack)


def test_the_migrate_service_created_the_instance_schema_in_postgres(production_stack):
    tables = {row[0] for row in sql(production_stack, "select tablename from pg_tables where schemaname = 'public'")}
    # Run storage, event log storage, schedule storage (deploy/dagster.yaml: one `storage: postgres`).
    assert {"runs", "run_tags", "event_logs", "asset_keys", "instigators", "job_ticks", "daemon_heartbeats",
            "concurrency_slots", "alembic_version"} <= tables, sorted(tables)  # fmt: skip
    log = production_stack.services["dagster-migrate"].log.read_text()
    assert "Storage schema state after migration" in log


def test_the_code_server_serves_the_definitions(production_stack):
    # The compose healthcheck (`dagster api grpc-health-check -p 4000`), as the container runs it.
    assert production_stack._healthy("ch-pipeline-code")
    data = graphql(production_stack, """{ workspaceOrError { __typename ... on Workspace { locationEntries {
        name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }""")
    (entry,) = data["workspaceOrError"]["locationEntries"]
    assert (entry["name"], entry["loadStatus"], entry["locationOrLoadError"]["__typename"]) == (LOCATION, "LOADED", "RepositoryLocation")


def test_sensors_start_running_and_tick_in_the_daemon(production_stack, instance):
    data = graphql(production_stack, """query($selector: RepositorySelector!) { sensorsOrError(repositorySelector: $selector) {
        __typename ... on Sensors { results { name sensorState { status } } } } }""",
                   selector={"repositoryLocationName": LOCATION, "repositoryName": "__repository__"})  # fmt: skip
    states = {sensor["name"]: sensor["sensorState"]["status"] for sensor in data["sensorsOrError"]["results"]}
    assert states == {sensor: "RUNNING" for sensor in SENSORS}

    def ticked() -> bool:
        done = {TickStatus.SUCCESS, TickStatus.SKIPPED}
        states = {s.instigator_name: s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)}
        return set(states) == set(SENSORS) and all(
            any(tick.status in done for tick in instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=5))
            for state in states.values()
        )  # the retention sensor ticks at its first evaluation, then hourly

    wait("every sensor ticked", ticked, 60, production_stack)


# --- the daemon launches runs through the code server; run monitoring and retries ----------------


def test_a_sigkilled_landing_run_worker_is_failed_by_its_code_server_and_its_retry_lands_it(production_stack, instance):
    """Who notices: the code server that launched the worker (DefaultRunLauncher) sees its process die
    and fails the run at once; run monitoring's worker health check does not exist for this launcher
    (its backstop is max_runtime, for a worker that died with its code server). Run retries (the
    daemon) then launch a retry of the same partition, which lands it."""
    code_server = psutil.Process(production_stack.services["ch-pipeline-code"].process.pid)
    killed: dg.DagsterRun | None = None
    deadline = time.monotonic() + 120
    while killed is None:
        assert time.monotonic() < deadline, f"no landing run worker caught running\n{diagnostics(production_stack)}"
        stack_alive(production_stack)
        for run in landing_runs(instance):
            if run.status != DagsterRunStatus.STARTED or PARENT_RUN_ID_TAG in run.tags:
                continue
            pid = worker_pid(instance, run.run_id)
            if pid is None:
                continue
            if instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_SUCCESS):
                continue  # landed already: killed now, it would leave run retries no step to retry
            try:
                worker = psutil.Process(pid)
                parents = [p.pid for p in worker.parents()]
                family = [worker, *worker.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue  # it finished meanwhile
            assert code_server.pid in parents, "the run worker is a process of the code server"
            for process in family:
                try:
                    process.kill()
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(family, timeout=10)
            killed = run
            break
        time.sleep(0.2)
    assert killed.tags.get(SENSOR_NAME_TAG) == KAFKA_SENSOR  # launched by the daemon from a sensor tick

    def ended():
        run = instance.get_run_by_id(killed.run_id)
        return run if run.status in (DagsterRunStatus.FAILURE, DagsterRunStatus.SUCCESS) else None

    ended_run = wait("the killed run ended", ended, MONITORING_BOUND, production_stack)
    if ended_run.status == DagsterRunStatus.SUCCESS:
        pytest.fail("the killed run is SUCCESS: it had finished before its worker was killed")
    messages = [r.dagster_event.message for r in instance.all_logs(killed.run_id) if r.dagster_event and r.dagster_event.message]
    print(f"killed run {killed.run_id[:8]} ({killed.tags[OFFSETS_TAG]}): {messages[-2:]}")
    assert any("[DagsterApiServer]" in m and "terminated by signal 9 (SIGKILL)" in m for m in messages), messages[-5:]

    def retried():
        runs = [r for r in landing_runs(instance) if r.tags.get(PARENT_RUN_ID_TAG) == killed.run_id]
        return runs[0] if runs and runs[0].status == DagsterRunStatus.SUCCESS else None

    retry = wait("the retry succeeded", retried, MONITORING_BOUND, production_stack)
    assert retry.tags[OFFSETS_TAG] == killed.tags[OFFSETS_TAG]
    assert dg.AssetKey("company_house_stream") in {
        r.dagster_event.asset_key for r in instance.all_logs(retry.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
    }


def settled(stack, instance) -> str | None:
    """None once the pipeline has nothing left to do, else why not."""
    target = stack.stream_target("producer")
    if read_checkpoint(target.checkpoint_path, target.url) != stack.replay.timepoints[-1]:
        return "the producer has not delivered the whole history"
    try:
        _, ends = probe_offsets({"bootstrap.servers": stack.broker.bootstrap_servers}, "company_house", timeout=10)
    except KafkaUnavailable as exc:
        return str(exc)
    state = next(s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR) if s.instigator_name == KAFKA_SENSOR)
    cursor = json.loads(state.instigator_data.cursor or "{}") if state.instigator_data else {}
    if {int(p): o for p, o in cursor.items()} != ends:
        return f"sensor cursor {cursor} != Kafka ends {ends}"
    if runs := instance.get_runs(filters=RunsFilter(statuses=IN_FLIGHT)):
        return f"{len(runs)} runs in flight"
    failed = [r for r in instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.FAILURE]))]
    if [r for r in failed if not instance.get_runs(filters=RunsFilter(tags={PARENT_RUN_ID_TAG: r.run_id}))]:
        return "a failed run awaits its retry"
    watermark = instance.get_latest_materialization_event(dg.AssetKey("get_last_timestamp"))
    inputs = [instance.get_latest_materialization_event(dg.AssetKey(k)) for k in ("company_house_stream", "company_house_bulk")]
    build = instance.get_run_record_by_id(watermark.run_id) if watermark else None
    # A build started after both inputs, or followed the landing in the same run (the companies landing run).
    if build is None or not all(i is not None and (build.start_time > i.timestamp or i.run_id == watermark.run_id) for i in inputs):
        return "no dbt build since the last landing"
    return None


def test_landing_and_dbt_runs_launched_by_the_daemon_succeed_and_the_core_equals_the_ground_truth(production_stack, instance):
    started = time.monotonic()
    reason = None

    def done() -> bool:
        nonlocal reason
        reason = settled(production_stack, instance)
        return reason is None

    try:
        wait("settled", done, SETTLE_BOUND, production_stack, interval=1.0)
    except AssertionError as exc:
        raise AssertionError(f"{reason}\n{exc}") from None
    print(f"settled {time.monotonic() - started:.0f}s after the kill test")

    runs = list(instance.get_runs())
    landings = [r for r in runs if r.job_name == LANDING_JOB]
    builds = [r for r in runs if dg.AssetKey("company_house_core") in (r.asset_selection or set())]
    assert landings and builds
    assert all(r.tags.get(SENSOR_NAME_TAG) == KAFKA_SENSOR for r in landings if PARENT_RUN_ID_TAG not in r.tags)
    assert all(r.tags.get(SENSOR_NAME_TAG) == AUTOMATION_SENSOR for r in builds if PARENT_RUN_ID_TAG not in r.tags)
    failed = [r for r in runs if r.status != DagsterRunStatus.SUCCESS]
    assert len(failed) == 1 and failed[0].job_name == LANDING_JOB, [(r.job_name, r.status) for r in failed]  # the one killed
    # The run records are Postgres rows (run storage), written by the daemon and the run workers.
    statuses = dict(sql(production_stack, "select status, count(*) from runs group by status"))
    assert statuses == {"SUCCESS": len(runs) - 1, "FAILURE": 1}
    print(f"{len(landings)} landing runs, {len(builds)} dbt builds, {len(runs)} runs in all")

    events = [json.loads(line) for line in production_stack.replay.lines]
    result = compare_core(production_stack.duckdb_path, events)
    _, ends = probe_offsets({"bootstrap.servers": production_stack.broker.bootstrap_servers}, "company_house", timeout=10)
    assert result["counts"]["stream rows"] + result["counts"]["rejects"] == sum(ends.values())
    assert result["counts"]["duplicate (partition, offset)"] == 0
    assert {int(p): o for p, o, *_ in result["watermark"]} == {p: end - 1 for p, end in ends.items() if end}
    assert result["mismatched"] == [], f"{len(result['mismatched'])} companies differ from the ground truth"


def test_another_stream_flows_through_its_own_producer_topic_sensor_and_landing_runs(production_stack, instance):
    """Officers: replay server -> producer-officers -> its topic -> its sensor -> its landing runs (the
    daemon, through the code server) -> its landing table -> its current-state model (dbt automation)."""
    spec, target = STREAMS[FLOWING], production_stack.stream_target(f"producer-{FLOWING}")
    job, sensor = spec.landing_job, spec.kafka_sensor
    served = production_stack.replay.log(FLOWING)  # FLOWING_EVENTS events, and the duplicates the API sends

    def landed() -> str | None:
        if read_checkpoint(target.checkpoint_path, target.url) != served.timepoints[-1]:
            return "producer-officers has not delivered the whole history"
        _, ends = probe_offsets({"bootstrap.servers": production_stack.broker.bootstrap_servers}, target.topic, timeout=10)
        states = [s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR) if s.instigator_name == sensor]
        cursor = json.loads(states[0].instigator_data.cursor or "{}") if states and states[0].instigator_data else {}
        if {int(p): o for p, o in cursor.items()} != ends:
            return f"{sensor} cursor {cursor} != Kafka ends {ends}"
        if instance.get_runs(filters=RunsFilter(statuses=IN_FLIGHT)):
            return "runs in flight"
        landing = instance.get_latest_materialization_event(dg.AssetKey(spec.landing_table))
        model = instance.get_latest_materialization_event(dg.AssetKey(spec.current_model))
        build = instance.get_run_record_by_id(model.run_id) if model else None
        if landing is None or build is None or build.start_time <= landing.timestamp:
            return f"no build of {spec.current_model} since the last landing"
        return None

    reason = None

    def done() -> bool:
        nonlocal reason
        reason = landed()
        return reason is None

    try:
        wait(f"{FLOWING} landed", done, SETTLE_BOUND, production_stack, interval=1.0)
    except AssertionError as exc:
        raise AssertionError(f"{reason}\n{exc}") from None
    runs = list(instance.get_runs(filters=RunsFilter(job_name=job)))
    assert runs and all(r.status == DagsterRunStatus.SUCCESS and r.tags.get(SENSOR_NAME_TAG) == sensor for r in runs)
    _, ends = probe_offsets({"bootstrap.servers": production_stack.broker.bootstrap_servers}, target.topic, timeout=10)
    assert sum(ends.values()) == len(served.lines) >= FLOWING_EVENTS
    events = [json.loads(line) for line in served.lines]
    result = compare_stream_model(production_stack.duckdb_path, spec, events)
    assert (result["landed"], result["rejects"]) == (len(served.lines), 0)
    assert result["mismatched"] == [], f"{len(result['mismatched'])} of {result['expected']} {FLOWING} items differ"
    print(f"{FLOWING}: {len(runs)} landing runs, {result['rows']} current rows")
    quiet = [name for name, count in STREAM_EVENTS.items() if count == 0]
    assert all(not instance.get_runs(filters=RunsFilter(job_name=STREAMS[name].landing_job)) for name in quiet)


# --- the webserver and the compute logs ------------------------------------------------------------


def test_the_webserver_lists_every_asset_the_code_server_defines(production_stack, instance):
    from dagster._core.remote_representation.code_location import GrpcServerCodeLocation
    from dagster._core.remote_origin import GrpcServerCodeLocationOrigin

    origin = GrpcServerCodeLocationOrigin(host="127.0.0.1", port=production_stack.grpc_port, location_name=LOCATION)
    with GrpcServerCodeLocation(origin, instance=instance) as location:
        (repository,) = location.get_repositories().values()
        defined = {node.asset_key.to_user_string() for node in repository.get_asset_node_snaps()}
    data = graphql(production_stack, "{ assetNodes { assetKey { path } } }")
    listed = {"/".join(node["assetKey"]["path"]) for node in data["assetNodes"]}
    assert listed == defined
    assert {"company_house_stream", "company_house_bulk", "snapshot_streamed_data", "company_house_core", "get_last_timestamp"} <= listed


def test_compute_logs_of_finished_runs_are_files_the_webserver_reads(production_stack, instance):
    checked = 0
    for run in instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.SUCCESS]), limit=3):
        # One capture per step process: another stream's landing run has two (the landing and its check).
        captures = [r.dagster_event.event_specific_data for r in instance.all_logs(run.run_id, of_type=DagsterEventType.LOGS_CAPTURED)]
        assert captures, run.run_id
        for captured in captures:
            files = production_stack.compute_logs / run.run_id / "compute_logs"
            stderr = (files / f"{captured.file_key}.err").read_text()
            assert "STEP_START" in stderr or "Started execution of step" in stderr, stderr[:2000]
            assert (files / f"{captured.file_key}.complete").exists()
            data = graphql(production_stack, "query($key: [String!]!) { capturedLogs(logKey: $key) { stdout stderr } }",
                           key=[run.run_id, "compute_logs", captured.file_key])  # fmt: skip
            assert data["capturedLogs"]["stderr"] == stderr
        checked += 1
    assert checked == 3


def test_dagster_migrate_run_again_on_the_live_instance_is_a_no_op(production_stack):
    """`docker compose up -d` runs the one-shot dagster-migrate again while the other services run."""
    migrate = production_stack.services["dagster-migrate"]
    migrate.start()
    assert migrate.process.wait(timeout=180) == 0, migrate.tail()
    assert "Skipping already applied migration" in migrate.log.read_text()
    graphql(production_stack, "{ assetNodes { id } }")  # the webserver still reads the instance


def test_a_restarted_code_server_is_used_again_by_the_daemon_and_the_webserver(production_stack, instance):
    """What `restart: unless-stopped` does after the code-server container dies: the same command on
    the same port. The daemon and the webserver, which were not restarted, must reach the new one."""
    code = production_stack.services["ch-pipeline-code"]
    os.killpg(code.process.pid, signal.SIGKILL)  # the whole container: the server and any run worker
    code.process.wait(timeout=30)
    restarted_at = time.time()
    code.start()
    wait("the code server healthy again", lambda: production_stack._healthy("ch-pipeline-code"), 120, production_stack, interval=3.0)

    def ticked_after_restart() -> bool:
        # The two sensors that tick every interval (the retention sensor is hourly).
        states = [s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
                  if s.instigator_name in (KAFKA_SENSOR, AUTOMATION_SENSOR)]  # fmt: skip
        return len(states) == 2 and all(
            any(t.timestamp > restarted_at and t.status in (TickStatus.SUCCESS, TickStatus.SKIPPED)
                for t in instance.get_ticks(s.instigator_origin_id, s.selector_id, limit=3))
            for s in states
        )  # fmt: skip

    wait("both sensors ticked on the new code server", ticked_after_restart, 90, production_stack, interval=1.0)

    def loaded() -> bool:
        data = graphql(production_stack, "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus "
                                         "locationOrLoadError { __typename } } } } }")  # fmt: skip
        (entry,) = data["workspaceOrError"]["locationEntries"]
        return entry["locationOrLoadError"]["__typename"] == "RepositoryLocation"

    wait("the webserver serving the new code server's location", loaded, 60, production_stack, interval=2.0)


def test_nothing_is_written_into_the_image(production_stack):
    """The image's code and DAGSTER_HOME belong to root, read-only for its uid 10001 (Dockerfile): every
    write must go to a volume or /tmp. Dagster's telemetry upload thread (webserver, daemon) creates
    two empty directories in DAGSTER_HOME even with telemetry disabled; where it cannot, it gives up
    silently (dagster/_core/telemetry_upload.py catches every exception), so those are allowed."""
    written = production_stack.image_changes()
    print(f"written into the image: {sorted(written)}")
    assert written <= {"opt/dagster/dagster_home/logs", "opt/dagster/dagster_home/.logs_queue"}, sorted(written)


def test_the_producers_stop_on_sigterm_within_their_grace_period_with_their_checkpoints(production_stack):
    """What `docker compose stop` does to each producer: SIGTERM to the container's process, SIGKILL
    after stop_grace_period. The compose file promises: flush, checkpoint, exit 0."""
    for name in PRODUCERS:
        production_stack.services[name].process.send_signal(signal.SIGTERM)
    for name in PRODUCERS:
        producer, target = production_stack.services[name], production_stack.stream_target(name)
        grace = float(production_stack.compose["services"][name]["stop_grace_period"].rstrip("s"))
        assert producer.process.wait(timeout=grace) == 0, producer.tail()
        last = production_stack.replay.log(PRODUCERS[name]).timepoints[-1:] or [None]  # a quiet stream: none
        assert read_checkpoint(target.checkpoint_path, target.url) == last[0], name
    last = production_stack.replay.timepoints[-1]
    assert f"checkpoint at timepoint {last}" in production_stack.services["producer"].tail(3)
