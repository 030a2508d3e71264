"""``ch-pipeline run``: the whole pipeline on one machine, on embedded defaults; the stack ``demo`` shares.

Both commands start the same parts (``LocalStack``): the local broker (memory storage), a topic per
stream followed (every stream of the catalogue by default), the replay server (a deterministic history
of generated events of every stream), one producer per stream (``ch-pipeline produce --stream NAME`` as
child processes, one connection each: nine of the key's ten), and Dagster: ``dagster dev`` (UI +
daemon) for ``run``, the daemon alone for ``demo`` (``ch_pipeline.demo``). The Kafka sensors and the
automation sensor start RUNNING, so data flows with no click. Children are started and stopped by ``ch_pipeline.processes``.

Resuming ``run`` with a memory broker: the broker is empty after a restart, so each topic is rebuilt
from what landed (``ch_pipeline.local_restore``: every landed message back at its offset, each
producer resumed from the last timepoint every Kafka partition of its topic landed up to, the Dagster
instance pointed at the restored logs) before Dagster starts; on any gap or mismatch the command refuses to
start rather than guess.
"""

from __future__ import annotations

import bisect
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import click

from ch_pipeline.companies_house.streams import COMPANIES, STREAM_NAMES, STREAMS
from ch_pipeline.kafka.broker import BrokerError, LocalBroker, port_is_taken
from ch_pipeline.kafka.checkpoint import write_checkpoint
from ch_pipeline.processes import Child, stop_children, stop_requested, venv_executable
from ch_pipeline.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCAL_INSTANCE_CONFIG = REPO_ROOT / "dagster.yaml"
TOPIC_PARTITIONS = 2
LOCAL_SEED = 20240101
# Variables of a production setup that must not leak into the local stack (the replay server needs no
# API key; the local broker takes no SASL; the warehouse is the local DuckDB file).
LOCAL_STACK_DROPS = (
    "CH_STREAM_API_KEY", "KAFKA_CONFIG_FILE", "KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD", "GOOGLE_APPLICATION_CREDENTIALS", "GCP_PROJECT", "BIGQUERY_DATASET", "BIGQUERY_API_ENDPOINT",
)  # fmt: skip


def prepare_dagster_home(data_dir: Path) -> Path:
    """A persistent local Dagster instance under CH_DATA_DIR, with the DuckDB pool settings."""
    home = data_dir / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(LOCAL_INSTANCE_CONFIG, home / "dagster.yaml")
    # Create the SQLite storages here, once: processes that start on a fresh home at the same
    # moment (daemon, code server) race on the schema migration ("more than one head present").
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.get_runs(limit=1)
        instance.get_latest_materialization_event(dg.AssetKey("company_house_stream"))
        if instance.schedule_storage:
            instance.schedule_storage.all_instigator_state()
    return home


class ChildProcesses:
    """The stack's children by name, each in its own process group, all stopped together (no orphans)."""

    def __init__(self) -> None:
        self._children: dict[str, Child] = {}

    def start(self, name: str, cmd: list[str], env: dict[str, str], log_path: Path | None = None) -> subprocess.Popen:
        # Children start in DAGSTER_HOME, a folder the stack owns: the Dagster CLI loads the `.env` of
        # its working directory, and one copied from .env.example into the repository would otherwise
        # point the local stack at production Kafka and BigQuery.
        child = Child(name, cmd, env, cwd=Path(env["DAGSTER_HOME"]), log=log_path)
        self._children[name] = child
        return child.start().process

    def restart(self, name: str) -> subprocess.Popen:
        """Start a child again with the command, environment and log it was started with."""
        return self._children[name].start().process

    def returncode(self, name: str) -> int | None:
        return self._children[name].returncode

    def first_exited(self, ignore: tuple[str, ...] = ()) -> tuple[str, int] | None:
        for name, child in self._children.items():
            if name not in ignore and child.returncode is not None:
                return name, child.returncode
        return None

    def stop(self, name: str) -> None:
        self._children[name].stop()

    def stop_all(self) -> None:
        stop_children(self._children.values())


LOCAL_HISTORY_RETENTION_DAYS = 2


@dataclass
class LocalStack:
    """Broker + topic + replay server + producer, and the environment every child shares."""

    settings: Settings
    events: int
    rate: float | None
    seed: int = LOCAL_SEED
    kafka_port: int | None = None
    sensor_interval: int | None = None  # the companies Kafka sensor and the automation sensor
    streams_sensor_interval: int | None = None  # the other streams' Kafka sensors
    streams: tuple[str, ...] = (COMPANIES,)  # the catalogue streams followed (streams.STREAM_NAMES)
    stream_events: dict[str, int] = field(default_factory=dict)  # events per stream other than companies
    broker: LocalBroker | None = field(default=None, init=False)
    replay: object | None = field(default=None, init=False)
    children: ChildProcesses = field(default_factory=ChildProcesses, init=False)

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    def start_kafka(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.broker = LocalBroker(port=self.kafka_port, log_path=self.data_dir / "broker.log")
        try:
            self.broker.start()
        except BrokerError as exc:
            raise click.ClickException(f"the local broker did not start: {exc}") from exc
        for name in self.streams:
            self.broker.create_topic(self.settings.stream_settings(name).topic, TOPIC_PARTITIONS)

    def start_replay_server(self, port: int = 0, history_until: int | None = None) -> None:
        """The replay server; events up to timepoint ``history_until`` are history, served at once."""
        from ch_pipeline.companies_house.replay_server import ReplayServer

        self.replay = ReplayServer(events=self.events, seed=self.seed, rate=self.rate, heartbeat_interval=2.0, port=port,
                                   stream_events=self.stream_events)  # fmt: skip
        if history_until is not None:
            self.replay.history = bisect.bisect_right(self.replay.timepoints, history_until)
        try:
            self.replay.start()
        except OSError as exc:
            raise click.ClickException(f"the replay server cannot listen on 127.0.0.1:{port} ({exc}): pass --replay-port") from exc

    def env(self) -> dict[str, str]:
        assert self.broker is not None and self.replay is not None
        env = {
            **os.environ,
            "CH_DATA_DIR": str(self.data_dir),
            "CH_DUCKDB_PATH": str(self.settings.duckdb_path),
            "CH_CHECKPOINT_PATH": str(self.settings.checkpoint_path),
            "KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap_servers,
            "KAFKA_TOPIC": self.settings.kafka_topic,
            "CH_STREAM_URL": self.replay.url,
            "CH_WAREHOUSE": "duckdb",
            "DBT_TARGET": "duckdb",
            "DAGSTER_HOME": str(prepare_dagster_home(self.data_dir)),
            # The venv's console scripts (dbt, dagster) for every child, activated or not.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        # The local stack is self-contained: no production credentials reach any of its children.
        for name in LOCAL_STACK_DROPS:
            env.pop(name, None)
        if self.sensor_interval:
            env["CH_SENSOR_INTERVAL_SECONDS"] = str(self.sensor_interval)
        if self.streams_sensor_interval:
            env["CH_STREAMS_SENSOR_INTERVAL_SECONDS"] = str(self.streams_sensor_interval)
        # A laptop keeps two days of runs (each run's files are ~156 KB on local SQLite), unless told otherwise.
        env.setdefault("CH_HISTORY_RETENTION_DAYS", str(LOCAL_HISTORY_RETENTION_DAYS))
        # The replay server dates its events in early 2026 and keeps timepoints by count, not time:
        # measured against the API's 3 days every local checkpoint would look expired. 0 = the stream
        # watches report ages only, never a replay-window warning.
        env["CH_STREAM_RETENTION_HOURS"] = "0"
        return env

    @staticmethod
    def producer_name(stream_name: str) -> str:
        """The child (and its log file) following ``stream_name``: ``producer``, ``producer-officers``, ..."""
        return "producer" if stream_name == COMPANIES else f"producer-{stream_name}"

    @property
    def producers(self) -> tuple[str, ...]:
        return tuple(self.producer_name(name) for name in self.streams)

    def start_producers(self, max_events: dict[str, int] | None = None) -> None:
        """One ``ch-pipeline produce --stream NAME`` per stream followed (``max_events``: stop after so many)."""
        env = self.env()
        for name in self.streams:
            cmd = [venv_executable("ch-pipeline"), "produce", "--stream", name, "--log-interval", "10"]
            if max_events is not None:
                cmd += ["--max-events", str(max_events[name])]
            self.children.start(self.producer_name(name), cmd, env, self.data_dir / f"{self.producer_name(name)}.log")

    def stop(self) -> None:
        self.children.stop_all()
        if self.replay is not None:
            self.replay.stop()
        if self.broker is not None:
            self.broker.stop()


@contextmanager
def hold_data_dir(data_dir: Path) -> Iterator[None]:
    """One stack per CH_DATA_DIR: a second one would rebuild the topic and reset runs under the first."""
    import fcntl

    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "run.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise click.ClickException(f"another ch-pipeline run is using {data_dir}: stop it first") from None
        yield


# --------------------------------------------------------------------------------------- run


def previous_checkpoint(path: Path, replay_port: int) -> int | None:
    """The timepoint the last local run had delivered, if any (its topic must be refilled to there)."""
    from ch_pipeline.kafka.checkpoint import CheckpointError, read_checkpoint

    try:
        return read_checkpoint(path, f"http://127.0.0.1:{replay_port}/companies")
    except CheckpointError:
        return None  # another stream's checkpoint: nothing of ours to refill


def restore_local_state(stack: LocalStack, settings: Settings) -> dict[str, object]:
    """A resumed run: each stream's topic in the new broker rebuilt from its landed rows, the instance
    pointed at them; stream name -> ``Restored`` (None: nothing of it had landed)."""
    from ch_pipeline.local_restore import RestoreRefused, reset_instance, restore_topic

    config = {"bootstrap.servers": stack.broker.bootstrap_servers}
    restored = {}
    for name in stack.streams:
        topic = settings.stream_settings(name).topic
        try:
            restored[name] = restore_topic(settings.duckdb_path, config, topic, TOPIC_PARTITIONS, STREAMS[name])
        except RestoreRefused as exc:
            raise click.ClickException(f"{topic}: {exc}") from exc
        if restored[name] is not None:
            landed = sum(restored[name].ends.values())
            click.echo(f"resuming {topic}: {landed:,} landed messages back at their offsets in the new in-memory broker; "
                       f"its producer resumes after timepoint {restored[name].resume_timepoint}")  # fmt: skip
    # A stream that had landed nothing starts again from offset 0 of its new, empty topic (its sensor
    # may have cut offsets of the old log whose landings never ran).
    ends = {name: r.ends if r is not None else dict.fromkeys(range(TOPIC_PARTITIONS), 0) for name, r in restored.items()}
    for change in reset_instance(prepare_dagster_home(settings.data_dir), ends):
        click.echo(f"resuming: {change}")
    return restored


def resume_checkpoints(stack: LocalStack, settings: Settings, restored: dict[str, object]) -> None:
    """Each producer resumes where its stream's landed log ends (or from the first event)."""
    for name in stack.streams:
        target = settings.stream_settings(name)
        resume = restored.get(name)
        if resume is None or resume.resume_timepoint is None:
            target.checkpoint_path.unlink(missing_ok=True)
        else:
            write_checkpoint(target.checkpoint_path, resume.resume_timepoint, stack.replay.url_for(name))


def parse_streams(value: str) -> tuple[str, ...]:
    """``all`` or a comma list of catalogue names; companies is always followed (the core needs it)."""
    if value.strip() == "all":
        return STREAM_NAMES
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in STREAMS]
    if unknown:
        raise click.BadParameter(f"unknown stream {', '.join(unknown)}: `all` or a comma list of {', '.join(STREAM_NAMES)}")
    return tuple(name for name in STREAM_NAMES if name in {COMPANIES, *names})


STREAMS_HELP = "Streams to follow: `all` (default) or a comma list of catalogue names (companies is always followed)."


@click.command("run")
@click.option("--port", default=3000, show_default=True, help="Dagster webserver port (bound to 127.0.0.1).")
@click.option("--kafka-port", default=9092, show_default=True, help="Local broker port.")
@click.option("--events", default=200_000, show_default=True, help="Events in the replay server's companies history.")
@click.option("--stream-events", default=20_000, show_default=True, help="Events in each other stream's history.")
@click.option("--rate", default=50.0, show_default=True, help="Events per second streamed by the replay server, per stream.")
@click.option("--replay-port", default=8765, show_default=True, help="Replay server port.")
# 10 s: a landing run that builds the core takes ~12 s here, so runs follow each other with little
# overlap; shorter intervals measured worse on 2 cores (runs starting up beside a build slow it), and
# the sensor's back-pressure (defs/stream.MAX_RUNS_IN_FLIGHT) keeps them from queueing (docs/architecture.md §11).
@click.option("--sensor-interval", default=10, show_default=True, help="Seconds between companies Kafka/automation sensor ticks.")
@click.option("--streams-sensor-interval", default=60, show_default=True, help="Seconds between each other stream's Kafka sensor ticks.")
@click.option("--streams", "streams_option", default="all", show_default=True, help=STREAMS_HELP)
def run_command(port: int, kafka_port: int, events: int, stream_events: int, rate: float, replay_port: int,
                sensor_interval: int, streams_sensor_interval: int, streams_option: str) -> None:  # fmt: skip
    """Run the whole pipeline locally: broker, replay server, producers, Dagster UI. Ctrl-C stops all.

    State (DuckDB file, Dagster instance, logs) lives under CH_DATA_DIR (default ./.ch-data);
    running it again resumes from there.
    """
    settings = Settings.from_env()
    streams = parse_streams(streams_option)
    if port_is_taken(port):
        raise click.ClickException(f"port {port} is already in use: stop what holds it or pass --port")
    stack = LocalStack(settings, events=events, rate=rate, kafka_port=kafka_port, sensor_interval=sensor_interval,
                       streams_sensor_interval=streams_sensor_interval, streams=streams, stream_events=dict.fromkeys(streams[1:], stream_events))  # fmt: skip
    with hold_data_dir(settings.data_dir), stop_requested() as stop:
        try:
            stack.start_kafka()
            restored = restore_local_state(stack, settings)
            previous = previous_checkpoint(settings.checkpoint_path, replay_port)
            # What the last run had streamed is history now, served at once (as the real API replays
            # its retained events to a client resuming from an old timepoint).
            stack.start_replay_server(port=replay_port, history_until=previous)
            resume_checkpoints(stack, settings, restored)
            stack.start_producers()
            env = stack.env()
            stack.children.start(
                "dagster dev", [venv_executable("dagster"), "dev", "-w", str(REPO_ROOT / "workspace.yaml"),
                                "-h", "127.0.0.1", "-p", str(port)], env,
                settings.data_dir / "dagster-dev.log",
            )  # fmt: skip
            others = f"; {len(streams) - 1} other streams, {stream_events:,} events each" if len(streams) > 1 else ""
            click.echo(f"replay server: {stack.replay.url} ({events:,} company events{others}; {rate:g}/s per stream)")
            topics = ", ".join(settings.stream_settings(name).topic for name in streams)
            click.echo(f"broker:        KAFKA_BOOTSTRAP_SERVERS={stack.broker.bootstrap_servers} (topics {topics})")
            click.echo(f"Dagster UI:    http://127.0.0.1:{port}/asset-groups  (starting; logs in {settings.data_dir})")
            click.echo(f"warehouse:     {settings.duckdb_path}")
            click.echo("Ctrl-C stops everything.")
            while not stop.is_set():
                exited = stack.children.first_exited(ignore=stack.producers)
                if exited:
                    raise click.ClickException(f"{exited[0]} exited with code {exited[1]}; see {settings.data_dir}")
                if not stack.broker.running:
                    raise click.ClickException(f"the local broker exited; see {settings.data_dir / 'broker.log'}")
                for producer in stack.producers:
                    if stack.children.returncode(producer) not in (None, 0):
                        # As a process manager would: it resumes from its checkpoint, nothing is lost.
                        click.echo(f"{producer} exited with code {stack.children.returncode(producer)}; restarting it")
                        time.sleep(2.0)
                        stack.children.restart(producer)
                stop.wait(0.5)
        finally:
            click.echo("stopping ...")
            stack.stop()
            click.echo("stopped.")
