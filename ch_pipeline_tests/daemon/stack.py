"""The pipeline as deployed locally, every part a real process, for the daemon-level crash suite.

``DaemonStack`` starts, each in its own process group: the local broker (tansu, memory storage) with
a fresh topic of two partitions; the replay server (a fixed generated history, a fixed seed, a
rate); the real producer (``ch-pipeline produce``); a real gRPC code server serving the test code
location (``code_location.py``: the project's definitions plus fault points armed by marker files);
and the real ``dagster-daemon run`` against a workspace that points at that code server, so either
can be killed and restarted without the other. The Dagster instance lives in a temporary
DAGSTER_HOME holding the project's own ``dagster.yaml`` (``prepare_dagster_home``: the ``duckdb``
pool of limit 1, run monitoring, run retries); the warehouse is a DuckDB file and the bulk
snapshot a small generated CSV (``CH_BULK_CSV``), loaded by the automation like on a first start.

Nothing here lands, requests or re-executes anything: after a fault the test only restarts the
process it killed and calls ``converge``, which waits for the pipeline to settle by itself and
then judges it against Kafka and the ground truth (``verdict``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import duckdb
import psutil
from dagster._core.events import DagsterEventType
from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter
from dagster._core.storage.tags import AUTO_RETRY_RUN_ID_TAG, PARENT_RUN_ID_TAG, WILL_RETRY_TAG

from ch_pipeline.companies_house.bulk_csv import SAMPLE_FILE_DATE, published_name, write_sample
from ch_pipeline.companies_house.replay_server import ReplayServer
from ch_pipeline.companies_house.streams import COMPANIES, STREAMS
from ch_pipeline.defs.stream import OFFSETS_TAG, company_house_stream_job
from ch_pipeline.kafka.broker import LocalBroker, free_port
from ch_pipeline.kafka.checkpoint import read_checkpoint
from ch_pipeline.kafka.offsets import KafkaUnavailable, probe_offsets
from ch_pipeline.demo_verdict import COMPARED_COLUMNS, expected_core, normalise
from ch_pipeline.local_stack import prepare_dagster_home
from ch_pipeline.processes import StartedInWith
from ch_pipeline.warehouse.schema import REJECTS_TABLE, STREAM_TABLE
from ch_pipeline_tests.daemon import faults

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CODE_LOCATION_MODULE = "ch_pipeline_tests.daemon.code_location"
LOCATION_NAME = "ch_pipeline"
TOPIC_PARTITIONS = 2
KAFKA_SENSOR = STREAMS[COMPANIES].kafka_sensor
STREAM = dg.AssetKey("company_house_stream")
BULK = dg.AssetKey("company_house_bulk")
CORE = dg.AssetKey("company_house_core")
WATERMARK = dg.AssetKey("get_last_timestamp")
IN_FLIGHT = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]
STARTUP_TIMEOUT = 120.0
GATE_CLOSED_RATE = 1e-9
_PID_MESSAGE = re.compile(r"Started process for run \(pid: (\d+)\)")


@dataclass
class StackConfig:
    events: int = 600  # distinct events in the replay history (the generator adds ~3 % duplicates)
    seed: int = 9
    rate: float | None = 20.0  # events/s the replay server streams (None: all at once)
    sensor_interval: int = 2  # CH_SENSOR_INTERVAL_SECONDS: both sensors
    bulk_companies: int = 2_000
    start_producer: bool = True
    # Gated: the replay server holds its events back until ``release`` lets them go (in bursts).
    gated: bool = False


# --- processes ------------------------------------------------------------------------------


@dataclass
class Child:
    """One process of the stack in its own process group (``start_new_session``)."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen | None = None
    groups: list[int] = field(default_factory=list)  # every group it ever had (orphans live on in them)

    def start(self) -> subprocess.Popen:
        out = self.log.open("ab")
        out.write(f"\n===== {time.strftime('%H:%M:%S')} start: {' '.join(self.cmd)}\n".encode())
        out.flush()
        self.process = subprocess.Popen(
            self.cmd, env=self.env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        out.close()
        self.groups.append(self.process.pid)
        return self.process

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL this process only (its children, e.g. a code server's run workers, live on)."""
        if self.alive:
            os.kill(self.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the group, then SIGKILL it (a dagster process started without a terminal may
        ignore SIGTERM), and SIGKILL whatever is left in any group it ever had."""
        if self.alive:
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
            _signal_group(self.pid, signal.SIGKILL)
        for group in self.groups:
            _kill_our_processes_in_group(group, self.env["DAGSTER_HOME"])

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def _signal_group(group: int, sig: int) -> None:
    """Signal a group whose leader we know is ours (alive, or just reaped by us)."""
    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_our_processes_in_group(group: int, dagster_home: str) -> None:
    """SIGKILL what is left in a group whose leader is gone (e.g. the run workers a killed code
    server orphaned), but only processes of this stack: pids and so group ids get reused."""
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == group and process.environ().get("DAGSTER_HOME") == dagster_home:
                process.kill()
        except (psutil.Error, ProcessLookupError, PermissionError):
            pass


def kill_tree(pid: int) -> list[int]:
    """SIGKILL ``pid`` and all its descendants (a dbt run worker has a ``dbt`` child); the pids killed."""
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    killed = []
    for process in family:
        try:
            process.kill()
            killed.append(process.pid)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=10)
    return killed


# --- the verdict ----------------------------------------------------------------------------


@dataclass
class Verdict:
    """The state the pipeline converged to, against Kafka and the ground truth."""

    kafka_ends: dict[int, int]
    kafka_messages: int
    landed_offsets: int  # distinct (partition, offset) in stream ∪ rejects
    missing_offsets: list[tuple[int, int]]
    unexpected_offsets: list[tuple[int, int]]
    duplicate_offsets: int  # (partition, offset) held more than once across stream and rejects
    watermark: dict[int, int]
    core_rows: int
    expected_rows: int
    differing_companies: list[str]

    @property
    def watermark_ok(self) -> bool:
        return self.watermark == {p: end - 1 for p, end in self.kafka_ends.items() if end > 0}

    @property
    def ok(self) -> bool:
        return (
            not self.missing_offsets
            and not self.unexpected_offsets
            and self.duplicate_offsets == 0
            and self.landed_offsets == self.kafka_messages
            and self.watermark_ok
            and self.core_rows == self.expected_rows
            and not self.differing_companies
        )

    def summary(self) -> str:
        return (
            f"Kafka messages {self.kafka_messages} (ends {self.kafka_ends}), landed offsets {self.landed_offsets}, "
            f"missing {len(self.missing_offsets)} {self.missing_offsets[:5]}, unexpected {len(self.unexpected_offsets)}, "
            f"duplicates {self.duplicate_offsets}, watermark {self.watermark}, core rows {self.core_rows} "
            f"(expected {self.expected_rows}), differing companies {len(self.differing_companies)} {self.differing_companies[:5]}"
        )


@dataclass
class Convergence:
    verdict: Verdict
    seconds: float  # from the call of converge
    seconds_after_last_fault: float | None


class NotConverged(AssertionError):
    pass


# --- the stack ------------------------------------------------------------------------------


class DaemonStack(StartedInWith):
    """``with DaemonStack(root, StackConfig(...)) as stack:`` every process running, stopped after."""

    def __init__(self, root: Path, config: StackConfig | None = None) -> None:
        self.root = root
        self.config = config or StackConfig()
        self.fault_dir = root / "faults"
        self.db = root / "warehouse.duckdb"
        self.checkpoint_path = root / "producer.checkpoint"
        self.topic = f"company_house_{uuid.uuid4().hex[:8]}"
        self.grpc_port = free_port()
        self.broker: LocalBroker | None = None
        self.replay: ReplayServer | None = None
        self.children: dict[str, Child] = {}
        self.instance: dg.DagsterInstance | None = None
        self.last_fault_at: float | None = None
        self.faults: list[tuple[float, str]] = []  # (time.time(), description)
        self.started_at = time.time()
        self._stopped = threading.Event()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.fault_dir.mkdir(exist_ok=True)
        self.broker = LocalBroker(log_path=self.root / "broker.log").start()
        self.broker.create_topic(self.topic, TOPIC_PARTITIONS)
        self.replay = ReplayServer(events=self.config.events, seed=self.config.seed, rate=self.config.rate, heartbeat_interval=0.5)
        if self.config.gated:
            # Events before `history` go at once, the others at `rate`: a rate of ~0 holds them back
            # (but for one: the server sends the first event after each burst at once).
            self.replay.rate, self.replay.history = GATE_CLOSED_RATE, 0
        self.replay.start()
        bulk_csv = write_sample(self.root / published_name(SAMPLE_FILE_DATE, ".csv"), self.config.bulk_companies, seed=5)
        home = prepare_dagster_home(self.root)
        (self.root / "workspace.yaml").write_text(
            "load_from:\n  - grpc_server:\n"
            f"      host: 127.0.0.1\n      port: {self.grpc_port}\n      location_name: {LOCATION_NAME}\n"
        )
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "CH_DATA_DIR": str(self.root),
            "CH_DUCKDB_PATH": str(self.db),
            "CH_CHECKPOINT_PATH": str(self.checkpoint_path),
            "CH_WAREHOUSE": "duckdb",
            "DBT_TARGET": "duckdb",
            "CH_BULK_CSV": str(bulk_csv),
            "KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap_servers,
            "KAFKA_TOPIC": self.topic,
            "CH_STREAM_URL": self.replay.url,
            "CH_SENSOR_INTERVAL_SECONDS": str(self.config.sensor_interval),
            # The replay server's events are dated early 2026: ages only, as under `ch-pipeline run`.
            "CH_STREAM_RETENTION_HOURS": "0",
            # dbt's target folder inside the scenario (the default, ch_dbt/target, is shared by
            # every run of the checkout: other test sessions' builds would write the same files).
            "DBT_TARGET_PATH": str(self.root / "dbt-target"),
            faults.FAULT_DIR_ENV: str(self.fault_dir),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(REPO_ROOT),
        }
        for name in ("CH_STREAM_API_KEY", "KAFKA_CONFIG_FILE", "PYTEST_CURRENT_TEST"):
            env.pop(name, None)
        self.env = env
        self.children = {
            "producer": Child("producer", [str(BIN / "ch-pipeline"), "produce", "--log-interval", "5"], env, self.root / "producer.log"),
            "code-server": Child(
                "code-server",
                [str(BIN / "dagster"), "api", "grpc", "-m", CODE_LOCATION_MODULE, "-d", str(REPO_ROOT),
                 "-h", "127.0.0.1", "-p", str(self.grpc_port), "--location-name", LOCATION_NAME],
                env, self.root / "code-server.log",
            ),  # fmt: skip
            "daemon": Child(
                "daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(self.root / "workspace.yaml")], env, self.root / "daemon.log"
            ),
        }
        self.instance = dg.DagsterInstance.from_config(str(home))
        self.start_code_server()
        self.start_daemon()
        if self.config.start_producer:
            self.start_producer()

    def stop(self) -> None:
        self._stopped.set()
        for name in ("producer", "daemon", "code-server"):
            child = self.children.get(name)
            if child is not None:
                child.stop()
        if self.replay is not None:
            self.replay.stop()
        if self.broker is not None:
            self.broker.stop()
        if self.instance is not None:
            self.instance.dispose()
            self.instance = None

    # --- the processes -----------------------------------------------------------------------

    def start_producer(self) -> None:
        self.children["producer"].start()

    def start_code_server(self) -> None:
        from dagster._grpc.client import DagsterGrpcClient

        child = self.children["code-server"]
        child.start()
        client = DagsterGrpcClient(port=self.grpc_port, host="127.0.0.1")
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if not child.alive:
                raise RuntimeError(f"the code server exited during startup:\n{child.tail()}")
            try:
                client.ping("ready")
                client.list_repositories()
                return
            except Exception:  # noqa: BLE001 - not listening yet
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the code server was not ready after {STARTUP_TIMEOUT:.0f}s:\n{child.tail()}") from None
                time.sleep(0.2)

    def start_daemon(self) -> None:
        child = self.children["daemon"]
        started = time.time()
        child.start()
        required = set(self.instance.get_required_daemon_types())
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if not child.alive:
                raise RuntimeError(f"the daemon exited during startup:\n{child.tail()}")
            beating = {name for name, beat in self.instance.get_daemon_heartbeats().items() if beat.timestamp >= started}
            if required <= beating:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"daemons {sorted(required - beating)} sent no heartbeat in {STARTUP_TIMEOUT:.0f}s:\n{child.tail()}")
            time.sleep(0.25)

    def fault(self, description: str, at: float | None = None) -> None:
        """Record that a fault was injected now (or ``at``); ``converge`` measures from the last one."""
        at = time.time() if at is None else at
        self.last_fault_at = max(self.last_fault_at or at, at)
        self.faults.append((at, description))

    def kill(self, name: str) -> None:
        """SIGKILL one part of the stack ('producer', 'daemon', 'code-server'), that process only."""
        self.fault(f"SIGKILL {name}")
        self.children[name].kill()

    def restart(self, name: str) -> None:
        {"producer": self.start_producer, "daemon": self.start_daemon, "code-server": self.start_code_server}[name]()

    def check_alive(self) -> None:
        for name in ("daemon", "code-server"):
            child = self.children[name]
            if not child.alive:
                raise AssertionError(f"the {name} exited unexpectedly:\n{child.tail()}")

    # --- runs --------------------------------------------------------------------------------

    def runs(self, statuses: Iterable[DagsterRunStatus] | None = None) -> list[dg.DagsterRun]:
        filters = RunsFilter(statuses=list(statuses)) if statuses is not None else None
        return list(self.instance.get_runs(filters=filters))

    def in_flight(self) -> list[dg.DagsterRun]:
        return self.runs(IN_FLIGHT)

    def pending_retries(self) -> list[dg.DagsterRun]:
        """Failed runs that run retries will re-launch but has not yet."""
        return [
            run for run in self.runs([DagsterRunStatus.FAILURE])
            if run.tags.get(WILL_RETRY_TAG) != "false" and AUTO_RETRY_RUN_ID_TAG not in run.tags and _retries_left(self.instance, run)
        ]  # fmt: skip

    def worker_pid(self, run_id: str, timeout: float = 60.0) -> int:
        """The pid of a run's worker process, from its event log (``Started process for run``)."""
        return self._worker(run_id, timeout)[0]

    def _worker(self, run_id: str, timeout: float) -> tuple[int, float]:
        """(pid, when it reported it) of a run's worker, from its event log."""
        deadline = time.monotonic() + timeout
        while True:
            for record in self.instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
                match = _PID_MESSAGE.search(record.dagster_event.message or "")
                if match:
                    return int(match.group(1)), record.timestamp
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} reported no worker process within {timeout:.0f}s")
            time.sleep(0.1)

    def kill_run_worker(self, run_id: str, description: str | None = None) -> list[int]:
        """SIGKILL a run's worker and its descendants (the ``dbt`` child of a dbt run).

        Only a process of one of our code servers' process groups (run workers inherit it): a
        pid from the event log whose worker has already exited may have been reused by anything.
        """
        pid, reported_at = self._worker(run_id, 60.0)
        try:
            group = os.getpgid(pid)
            born = psutil.Process(pid).create_time()
        except (ProcessLookupError, psutil.Error):
            return []
        if group not in self.children["code-server"].groups or born > reported_at + 1:
            return []  # not a process of ours, or the pid was reused after the worker exited
        self.fault(description or f"SIGKILL run worker {run_id[:8]} (pid {pid})")
        return kill_tree(pid)

    def launching_now(self, max_age: float = 60.0) -> list[dg.DagsterRun]:
        """Runs the daemon is launching through the code server right now: STARTING for less than
        ``max_age`` s, and no worker has reported yet (``StartRun`` waits for that report). A run
        STARTING for longer with no worker is one whose launch died with the daemon: run monitoring
        fails it after ``start_timeout_seconds``."""
        launching = []
        for run in self.runs([DagsterRunStatus.STARTING]):
            events = self.instance.all_logs(run.run_id)
            starting = [e.timestamp for e in events if e.dagster_event and e.dagster_event.event_type == DagsterEventType.PIPELINE_STARTING]
            reported = any(_PID_MESSAGE.search(e.dagster_event.message or "") for e in events if e.dagster_event)
            if starting and not reported and time.time() - max(starting) < max_age:
                launching.append(run)
        return launching

    def materialized_in_run(self, run_id: str) -> set[str]:
        return {
            record.dagster_event.asset_key.to_user_string()
            for record in self.instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
        }

    def wait_for_run(self, predicate, timeout: float, what: str) -> dg.DagsterRun:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            for run in self.runs():
                if predicate(run):
                    return run
            time.sleep(0.2)
        raise AssertionError(f"no run {what} within {timeout:.0f}s\n{self.diagnostics()}")

    def wait_run_status(self, run_id: str, statuses: set[DagsterRunStatus], timeout: float) -> dg.DagsterRun:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.instance.get_run_by_id(run_id)
            if run is not None and run.status in statuses:
                return run
            time.sleep(0.2)
        run = self.instance.get_run_by_id(run_id)
        raise AssertionError(f"run {run_id} is {run.status if run else None}, not {statuses}, after {timeout:.0f}s\n{self.diagnostics()}")

    # --- Kafka, producer, sensor ------------------------------------------------------------

    @property
    def kafka_config(self) -> dict[str, str]:
        return {"bootstrap.servers": self.broker.bootstrap_servers}

    def kafka_offsets(self) -> tuple[dict[int, int], dict[int, int]]:
        return probe_offsets(self.kafka_config, self.topic, timeout=10)

    def producer_checkpoint(self) -> int | None:
        return read_checkpoint(self.checkpoint_path, self.replay.url)

    @property
    def released_until(self) -> int:
        """The last timepoint the replay server lets go (the whole history unless gated)."""
        if self.config.gated and self.replay.history < len(self.replay.lines):
            return self.replay.timepoints[max(self.replay.history, 1) - 1]
        return self.replay.timepoints[-1]

    def producer_done(self) -> bool:
        """The producer delivered everything released (checkpointed past it)."""
        return (self.producer_checkpoint() or 0) >= self.released_until

    def served_events(self) -> list[dict]:
        """The events now in Kafka as the producer delivered them: up to its checkpoint."""
        checkpoint = self.producer_checkpoint() or 0
        return [json.loads(line) for line, tp in zip(self.replay.lines, self.replay.timepoints) if tp <= checkpoint]

    def wait_produced(self, fraction: float, timeout: float) -> None:
        """Until the producer's checkpoint passed ``fraction`` of the history."""
        target = self.replay.timepoints[min(len(self.replay.timepoints) - 1, int(len(self.replay.timepoints) * fraction))]
        deadline = time.monotonic() + timeout
        while (self.producer_checkpoint() or 0) < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"the producer did not reach timepoint {target} within {timeout:.0f}s\n{self.children['producer'].tail()}")
            time.sleep(0.2)

    def release(self, events: int) -> int:
        """Gated stream: let the next ``events`` events of the history go at once; the last timepoint released."""
        self.replay.history = min(len(self.replay.lines), self.replay.history + events)
        return self.released_until

    def trickle(self, events: int, rate: float) -> threading.Thread:
        """Gated stream: let the next ``events`` events go at ``rate`` per second (a thread)."""
        target = min(len(self.replay.lines), self.replay.history + events)

        def open_gate() -> None:
            while self.replay.history < target and not self._stopped.is_set():
                self.replay.history += 1
                self._stopped.wait(1.0 / rate)

        thread = threading.Thread(target=open_gate, name="replay-gate", daemon=True)
        thread.start()
        return thread

    @property
    def remaining_events(self) -> int:
        return len(self.replay.lines) - self.replay.history

    def wait_checkpoint(self, timepoint: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (self.producer_checkpoint() or 0) < timepoint:
            if time.monotonic() > deadline:
                raise AssertionError(f"the producer did not reach timepoint {timepoint} within {timeout:.0f}s\n{self.children['producer'].tail()}")
            time.sleep(0.2)

    def sensor_cursor(self) -> dict[int, int]:
        from dagster._core.scheduler.instigation import InstigatorType

        for state in self.instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
            if state.instigator_name == KAFKA_SENSOR and state.instigator_data and state.instigator_data.cursor:
                return {int(p): int(o) for p, o in json.loads(state.instigator_data.cursor).items()}
        return {}

    # --- assets ------------------------------------------------------------------------------

    def missing_landings(self) -> list[str]:
        """Offsets keys the sensor requested a landing for that no run landed (retries keep the key's tag).
        Landed: its run succeeded, or its landing materialized (a companies landing run whose build after
        the landing failed for good)."""
        runs = self.runs()
        landed = {run.tags.get(OFFSETS_TAG) for run in runs if run.status == DagsterRunStatus.SUCCESS}
        landed |= {record.asset_materialization.metadata["landing"].value
                   for record in self.instance.fetch_materializations(STREAM, limit=10_000).records}  # fmt: skip
        return sorted({key for run in runs if (key := run.tags.get(OFFSETS_TAG)) and key not in landed})

    def last_materialization(self, key: dg.AssetKey):
        return self.instance.get_latest_materialization_event(key)

    def build_after_last_input(self) -> bool:
        """The latest watermark materialization comes from a run that started after the latest
        stream (and bulk) materialization: nothing landed is left for the automation to build."""
        watermark = self.last_materialization(WATERMARK)
        if watermark is None:
            return False
        run = self.instance.get_run_record_by_id(watermark.run_id)
        inputs = [event.timestamp for key in (STREAM, BULK) if (event := self.last_materialization(key)) is not None]
        return run is not None and run.start_time is not None and all(self.build_saw_from(run) >= t for t in inputs)

    def build_saw_from(self, run: dg.RunRecord) -> float:
        """When a build started reading: its run's start, or the landing of its own run (a companies
        landing run builds the core after landing, defs/stream.py)."""
        landed = [record.timestamp for record in self.instance.all_logs(run.dagster_run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
                  if record.dagster_event.asset_key == STREAM]  # fmt: skip
        return max([run.start_time, *landed])

    def builds(self) -> list[tuple[str, float, float]]:
        """(run id, when it started reading (``build_saw_from``), watermark materialization time) of every
        dbt build that completed."""
        builds = []
        for record in self.instance.fetch_materializations(WATERMARK, limit=10_000).records:
            run = self.instance.get_run_record_by_id(record.run_id)
            if run is not None and run.start_time is not None:
                builds.append((record.run_id, self.build_saw_from(run), record.timestamp))
        return sorted(builds, key=lambda build: build[2])

    def last_landing_at(self) -> float | None:
        event = self.last_materialization(STREAM)
        return event.timestamp if event is not None else None

    def core_reached(self, landed_at: float) -> float | None:
        """When the first build that started reading after ``landed_at`` (a landing) completed."""
        return next((done for _, start, done in self.builds() if start >= landed_at), None)

    def last_event_produced_at(self) -> float:
        """When the last message entered Kafka (its timestamp; the warehouse keeps it)."""
        with duckdb.connect(str(self.db), read_only=True) as con:
            return con.execute(
                f"select epoch(max(kafka_timestamp)) from (select kafka_timestamp from {STREAM_TABLE} "
                f"union all select kafka_timestamp from {REJECTS_TABLE})"
            ).fetchone()[0]

    # --- convergence -------------------------------------------------------------------------

    def settled(self) -> tuple[bool, str]:
        """Has the pipeline nothing left to do? (not yet: the first reason why)."""
        self.check_alive()
        if not self.producer_done():
            return False, f"producer at timepoint {self.producer_checkpoint()} of {self.released_until}"
        if runs := self.in_flight():
            return False, f"{len(runs)} runs in flight ({', '.join(sorted({r.status.value for r in runs}))})"
        if retries := self.pending_retries():
            return False, f"{len(retries)} failed runs awaiting their retry"
        if missing := self.missing_landings():
            return False, f"{len(missing)} requested landings not landed: {missing[:3]}"
        if not self.build_after_last_input():
            return False, "no dbt build since the last landing"
        try:
            _, ends = self.kafka_offsets()
        except KafkaUnavailable as exc:
            return False, f"Kafka: {exc}"
        cursor = self.sensor_cursor()
        if any(cursor.get(p, 0) < end for p, end in ends.items()):
            return False, f"sensor cursor {cursor} behind Kafka {ends}"
        return True, "settled"

    def converge(self, timeout: float) -> Convergence:
        """Wait, doing nothing, until the pipeline has settled by itself; then the verdict.

        Settled: the producer delivered the whole history, the Kafka sensor's cursor reached the
        end of every Kafka partition, no run is queued or in flight, no failed run awaits its
        retry, every stream partition is landed, the last dbt build started after the last landing,
        and the watermark equals Kafka's end per partition. DuckDB is read (read-only) only while
        no run is in flight, and a lock error means try again later.
        """
        started = time.time()
        deadline = time.monotonic() + timeout
        reason = "not checked yet"
        while time.monotonic() < deadline:
            done, reason = self.settled()
            if done:
                try:
                    verdict = self.verdict()
                except duckdb.IOException as exc:  # a run started meanwhile and holds the file
                    reason = f"DuckDB busy: {exc}"
                else:
                    if verdict.watermark_ok:
                        now = time.time()
                        return Convergence(verdict, now - started, None if self.last_fault_at is None else now - self.last_fault_at)
                    reason = f"watermark {verdict.watermark} != Kafka ends - 1 {verdict.kafka_ends}"
            time.sleep(1.0)
        raise NotConverged(f"not converged after {timeout:.0f}s: {reason}\n{self.diagnostics()}")

    def verdict(self) -> Verdict:
        lows, ends = self.kafka_offsets()
        expected_offsets = {(p, o) for p in ends for o in range(lows[p], ends[p])}
        with duckdb.connect(str(self.db), read_only=True) as con:
            held = con.execute(
                f"select kafka_partition, kafka_offset, count(*) from (select kafka_partition, kafka_offset from {STREAM_TABLE} "
                f"union all select kafka_partition, kafka_offset from {REJECTS_TABLE}) group by all"
            ).fetchall()
            watermark = dict(con.execute("select kafka_partition, last_offset from get_last_timestamp").fetchall())
            bulk = _rows_by_number(con, "company_house_bulk")
            core = _rows_by_number(con, "company_house_core")
        landed = {(p, o) for p, o, _ in held}
        expected = expected_core(bulk, self.served_events())
        differing = sorted(
            n for n in expected.keys() | core.keys() if n not in core or n not in expected or normalise(core[n]) != normalise(expected[n])
        )
        return Verdict(
            kafka_ends=dict(ends),
            kafka_messages=len(expected_offsets),
            landed_offsets=len(landed),
            missing_offsets=sorted(expected_offsets - landed),
            unexpected_offsets=sorted(landed - expected_offsets),
            duplicate_offsets=sum(1 for *_, count in held if count > 1),
            watermark={int(p): int(o) for p, o in watermark.items()},
            core_rows=len(core),
            expected_rows=len(expected),
            differing_companies=differing,
        )

    def pool_claims(self) -> list[tuple[str, str]]:
        info = self.instance.event_log_storage.get_concurrency_info("duckdb")
        return [(slot.run_id, slot.step_key) for slot in info.claimed_slots]

    def wait_pool_free(self, timeout: float = 30.0) -> list[tuple[str, str]]:
        """The ``duckdb`` pool's claimed slots, once none is left (or what is left at the timeout)."""
        deadline = time.monotonic() + timeout
        while (claims := self.pool_claims()) and time.monotonic() < deadline:
            time.sleep(0.5)
        return claims

    # --- reporting ---------------------------------------------------------------------------

    def run_stats(self) -> "RunStats":
        return RunStats.of(self.instance, self.runs())

    def diagnostics(self) -> str:
        lines = ["--- runs:"]
        for run in sorted(self.runs(), key=lambda r: r.run_id):
            lines.append(f"  {run.run_id[:8]} {run_kind(run):8} {run.status.value:10} parent={run.tags.get(PARENT_RUN_ID_TAG, '')[:8]} "
                         f"offsets={run.tags.get(OFFSETS_TAG, '')}")  # fmt: skip
        lines.append(f"--- pool claims: {self.pool_claims()}")
        lines.append(f"--- sensor cursor: {self.sensor_cursor()}; producer checkpoint {self.producer_checkpoint()}")
        lines.append(f"--- faults: {[(round(t - self.started_at, 1), d) for t, d in self.faults]}")
        for name, child in self.children.items():
            lines.append(f"--- {name} log (tail):\n{child.tail(25)}")
        return "\n".join(lines)


def builds_core(run: dg.DagsterRun) -> bool:
    """A dbt build of the core: launched by the automation, or a companies landing run's build."""
    return run_kind(run) in ("dbt", "landing+dbt")


def run_kind(run: dg.DagsterRun) -> str:
    selection = run.asset_selection or set()
    if run.job_name == company_house_stream_job.name:
        # The whole job (no selection) lands, then builds the core (defs/stream.py).
        return "landing" if selection and CORE not in selection else "landing+dbt"
    if CORE in selection:
        return "dbt"
    if BULK in selection:
        return "bulk"
    return run.job_name


def _retries_left(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    group = instance.get_run_group(run.run_id)
    size = len(group[1]) if group else 1
    return size <= instance.run_retries_max_retries


def _rows_by_number(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, dict]:
    columns = ("company_number", *COMPARED_COLUMNS)
    rows = con.execute(f"select {', '.join(columns)} from {table}").fetchall()
    return {row[0]: dict(zip(columns, row)) for row in rows}


@dataclass
class RunStats:
    """Runs by kind and outcome: killed (failed), recovered (a failed run whose retry chain succeeded)."""

    total: int
    by_kind: dict[str, int]
    failed: int
    recovered: int
    unrecovered: list[str]

    @classmethod
    def of(cls, instance: dg.DagsterInstance, runs: list[dg.DagsterRun]) -> "RunStats":
        by_id = {run.run_id: run for run in runs}
        by_kind: dict[str, int] = {}
        for run in runs:
            by_kind[run_kind(run)] = by_kind.get(run_kind(run), 0) + 1
        failed = [run for run in runs if run.status == DagsterRunStatus.FAILURE]
        recovered, unrecovered = 0, []
        for run in failed:
            child = by_id.get(run.tags.get(AUTO_RETRY_RUN_ID_TAG, ""))
            while child is not None and child.status == DagsterRunStatus.FAILURE:
                child = by_id.get(child.tags.get(AUTO_RETRY_RUN_ID_TAG, ""))
            if child is not None and child.status == DagsterRunStatus.SUCCESS:
                recovered += 1
            else:
                unrecovered.append(run.run_id)
        return cls(len(runs), by_kind, len(failed), recovered, unrecovered)
