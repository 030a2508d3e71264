"""``ch-pipeline run`` and ``ch-pipeline demo``: the whole pipeline on one machine, on embedded defaults.

Both start the same parts: the local broker (memory storage), the topic, the replay server (a
deterministic history of generated events), the producer (``ch-pipeline produce`` as a child
process), and Dagster: ``dagster dev`` (UI + daemon) for ``run``, the daemon alone for ``demo``.
The Kafka sensor and the automation sensor start RUNNING, so data flows with no click.

Resuming ``run`` with a memory broker: the broker is empty after a restart, so the topic is rebuilt
from what landed (``ch_pipeline.local_restore``: every landed message back at its offset, the
producer resumed from the last timepoint every Kafka partition landed up to, the Dagster instance
pointed at the restored log) before Dagster starts; on any gap or mismatch the command refuses to
start rather than guess.
"""

from __future__ import annotations

import bisect
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import click

from ch_pipeline.kafka.broker import BrokerError, LocalBroker, free_port, port_is_taken
from ch_pipeline.kafka.checkpoint import write_checkpoint
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
COMPARED_COLUMNS = ("company_name", "company_status", "date_of_creation", "postal_code")


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


def venv_executable(name: str) -> str:
    """A console script beside this interpreter: the venv need not be on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


class ChildProcesses:
    """Child processes started in their own process groups and all stopped together (no orphans)."""

    def __init__(self) -> None:
        self._children: list[tuple[str, subprocess.Popen]] = []
        self._commands: dict[str, tuple] = {}

    def start(self, name: str, cmd: list[str], env: dict[str, str], log_path: Path | None = None) -> subprocess.Popen:
        out = open(log_path, "ab") if log_path else None
        # Children start in DAGSTER_HOME, a folder the stack owns: the Dagster CLI loads the `.env` of
        # its working directory, and one copied from .env.example into the repository would otherwise
        # point the local stack at production Kafka and BigQuery.
        process = subprocess.Popen(
            cmd, env=env, cwd=env["DAGSTER_HOME"], stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT if out else None, start_new_session=True,
        )  # fmt: skip
        self._children.append((name, process))
        self._commands[name] = (cmd, env, log_path)
        return process

    def restart(self, name: str) -> subprocess.Popen:
        """Start a child again with the command, environment and log it was started with."""
        index, (_, process) = next((i, c) for i, c in enumerate(self._children) if c[0] == name)
        del self._children[index]
        return self.start(name, *self._commands[name])

    def returncode(self, name: str) -> int | None:
        return next(process.poll() for child_name, process in self._children if child_name == name)

    def first_exited(self, ignore: tuple[str, ...] = ()) -> tuple[str, int] | None:
        for name, process in self._children:
            if name not in ignore and process.poll() is not None:
                return name, process.returncode
        return None

    def stop(self, name: str, timeout: float = 20.0) -> None:
        for child_name, process in self._children:
            if child_name == name:
                _terminate_group(process, timeout)

    def stop_all(self, timeout: float = 20.0) -> None:
        for _, process in reversed(self._children):
            _terminate_group(process, timeout)


def _terminate_group(process: subprocess.Popen, timeout: float) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass
    # The group may hold grandchildren (dagster's code server, run workers) after the leader exits.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class LocalStack:
    """Broker + topic + replay server + producer, and the environment every child shares."""

    settings: Settings
    events: int
    rate: float | None
    seed: int = LOCAL_SEED
    kafka_port: int | None = None
    sensor_interval: int | None = None
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
        self.broker.create_topic(self.settings.kafka_topic, TOPIC_PARTITIONS)

    def start_replay_server(self, port: int = 0, history_until: int | None = None) -> None:
        """The replay server; events up to timepoint ``history_until`` are history, served at once."""
        from ch_pipeline.companies_house.replay_server import ReplayServer

        self.replay = ReplayServer(events=self.events, seed=self.seed, rate=self.rate, heartbeat_interval=2.0, port=port)
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
        return env

    def start_producer(self, max_events: int | None = None) -> None:
        cmd = [venv_executable("ch-pipeline"), "produce", "--log-interval", "10"]
        if max_events is not None:
            cmd += ["--max-events", str(max_events)]
        self.children.start("producer", cmd, self.env(), self.data_dir / "producer.log")

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


@contextmanager
def stop_on_signals() -> Iterator[dict[str, bool]]:
    """SIGINT/SIGTERM set a flag instead of raising, so shutdown runs in order, once."""
    state = {"stopping": False}

    def request_stop(*_: object) -> None:
        state["stopping"] = True

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------------------- run


def previous_checkpoint(path: Path, replay_port: int) -> int | None:
    """The timepoint the last local run had delivered, if any (its topic must be refilled to there)."""
    from ch_pipeline.kafka.checkpoint import CheckpointError, read_checkpoint

    try:
        return read_checkpoint(path, f"http://127.0.0.1:{replay_port}/companies")
    except CheckpointError:
        return None  # another stream's checkpoint: nothing of ours to refill


def restore_local_state(stack: LocalStack, settings: Settings):
    """A resumed run: the new broker's topic rebuilt from the landed rows, the instance pointed at it."""
    from ch_pipeline.local_restore import RestoreRefused, reset_instance, restore_topic

    try:
        restored = restore_topic(settings.duckdb_path, {"bootstrap.servers": stack.broker.bootstrap_servers},
                                 settings.kafka_topic, TOPIC_PARTITIONS)  # fmt: skip
    except RestoreRefused as exc:
        raise click.ClickException(str(exc)) from exc
    if restored is not None:
        landed = sum(restored.ends.values())
        click.echo(f"resuming: {landed:,} landed messages back at their offsets in the new in-memory broker; "
                   f"the producer resumes after timepoint {restored.resume_timepoint}")  # fmt: skip
        for change in reset_instance(prepare_dagster_home(settings.data_dir), restored.ends):
            click.echo(f"resuming: {change}")
    return restored


@click.command("run")
@click.option("--port", default=3000, show_default=True, help="Dagster webserver port (bound to 127.0.0.1).")
@click.option("--kafka-port", default=9092, show_default=True, help="Local broker port.")
@click.option("--events", default=200_000, show_default=True, help="Events in the replay server's history.")
@click.option("--rate", default=50.0, show_default=True, help="Events per second streamed by the replay server.")
@click.option("--replay-port", default=8765, show_default=True, help="Replay server port.")
@click.option("--sensor-interval", default=15, show_default=True, help="Seconds between Kafka/automation sensor ticks.")
def run_command(port: int, kafka_port: int, events: int, rate: float, replay_port: int, sensor_interval: int) -> None:
    """Run the whole pipeline locally: broker, replay server, producer, Dagster UI. Ctrl-C stops all.

    State (DuckDB file, Dagster instance, logs) lives under CH_DATA_DIR (default ./.ch-data);
    running it again resumes from there.
    """
    settings = Settings.from_env()
    if port_is_taken(port):
        raise click.ClickException(f"port {port} is already in use: stop what holds it or pass --port")
    stack = LocalStack(settings, events=events, rate=rate, kafka_port=kafka_port, sensor_interval=sensor_interval)
    with hold_data_dir(settings.data_dir), stop_on_signals() as state:
        try:
            stack.start_kafka()
            restored = restore_local_state(stack, settings)
            previous = previous_checkpoint(settings.checkpoint_path, replay_port)
            # What the last run had streamed is history now, served at once (as the real API replays
            # its retained events to a client resuming from an old timepoint).
            stack.start_replay_server(port=replay_port, history_until=previous)
            if restored is None or restored.resume_timepoint is None:
                settings.checkpoint_path.unlink(missing_ok=True)
            else:
                write_checkpoint(settings.checkpoint_path, restored.resume_timepoint, stack.replay.url)
            stack.start_producer()
            env = stack.env()
            stack.children.start(
                "dagster dev", [venv_executable("dagster"), "dev", "-w", str(REPO_ROOT / "workspace.yaml"),
                                "-h", "127.0.0.1", "-p", str(port)], env,
                settings.data_dir / "dagster-dev.log",
            )  # fmt: skip
            click.echo(f"replay server: {stack.replay.url} ({events:,} events at {rate:g}/s)")
            click.echo(f"broker:        KAFKA_BOOTSTRAP_SERVERS={stack.broker.bootstrap_servers} (topic {settings.kafka_topic})")
            click.echo(f"Dagster UI:    http://127.0.0.1:{port}/asset-groups  (starting; logs in {settings.data_dir})")
            click.echo(f"warehouse:     {settings.duckdb_path}")
            click.echo("Ctrl-C stops everything.")
            while not state["stopping"]:
                exited = stack.children.first_exited(ignore=("producer",))
                if exited:
                    raise click.ClickException(f"{exited[0]} exited with code {exited[1]}; see {settings.data_dir}")
                if not stack.broker.running:
                    raise click.ClickException(f"the local broker exited; see {settings.data_dir / 'broker.log'}")
                if stack.children.returncode("producer") not in (None, 0):
                    # As a process manager would: it resumes from its checkpoint, nothing is lost.
                    click.echo(f"the producer exited with code {stack.children.returncode('producer')}; restarting it")
                    time.sleep(2.0)
                    stack.children.restart("producer")
                time.sleep(0.5)
        finally:
            click.echo("stopping ...")
            stack.stop()
            click.echo("stopped.")


# -------------------------------------------------------------------------------------- demo


@dataclass
class DemoProgress:
    messages: int = 0
    landed: int = 0
    last_landing_at: float | None = None
    core_runs: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of dbt runs with core

    @property
    def caught_up(self) -> bool:
        return (
            self.messages > 0
            and self.landed >= self.messages
            and self.last_landing_at is not None
            and any(start > self.last_landing_at for start, _ in self.core_runs)
        )


def poll_instance(instance, progress: DemoProgress) -> None:
    """What the Dagster instance knows: landed messages per partition and finished dbt runs."""
    import dagster as dg

    latest: dict[str, tuple[float, int]] = {}
    for record in instance.fetch_materializations(dg.AssetKey("company_house_stream"), limit=10_000).records:
        materialization = record.asset_materialization
        metadata = materialization.metadata
        count = int(metadata["rows"].value) + int(metadata["rejects"].value)
        if materialization.partition not in latest or latest[materialization.partition][0] < record.timestamp:
            latest[materialization.partition] = (record.timestamp, count)
    progress.landed = sum(count for _, count in latest.values())
    progress.last_landing_at = max((ts for ts, _ in latest.values()), default=None)
    # A dbt run counts once it has rebuilt both the core and the watermark.
    core_runs = _materializing_runs(instance, "company_house_core")
    watermark_runs = _materializing_runs(instance, "get_last_timestamp")
    progress.core_runs = sorted(
        (start, max(end, watermark_runs[run_id][1])) for run_id, (start, end) in core_runs.items() if run_id in watermark_runs
    )


def _materializing_runs(instance, asset: str) -> dict[str, tuple[float, float]]:
    """run id -> (run start, materialization time) for every materialization of ``asset``."""
    import dagster as dg

    runs = {}
    for record in instance.fetch_materializations(dg.AssetKey(asset), limit=10_000).records:
        run = instance.get_run_record_by_id(record.run_id)
        if run is not None and run.start_time is not None:
            runs[record.run_id] = (run.start_time, record.timestamp)
    return runs


def kafka_message_count(config: dict[str, str], topic: str) -> int:
    from ch_pipeline.kafka.offsets import probe_offsets

    lows, ends = probe_offsets(config, topic, timeout=10)
    return sum(ends[p] - lows[p] for p in ends)


def expected_core(bulk_rows: dict[str, dict], events: list[dict]) -> dict[str, dict]:
    """Ground truth, independent of the SQL: the bulk baseline, then each company's latest event."""
    from ch_pipeline.companies_house.events import company_number_of, final_companies

    expected = dict(bulk_rows)
    final = final_companies(events)
    for number in {company_number_of(event) for event in events}:
        if number in final:
            expected[number] = final[number]
        else:
            expected.pop(number, None)  # its latest event deleted it
    return expected


def _normalise(row: dict) -> tuple:
    values = []
    for column in COMPARED_COLUMNS:
        value = row.get(column)
        if isinstance(value, (date, datetime)):
            value = value.isoformat()[:10]
        values.append(value)
    return tuple(values)


def compare_core(duckdb_path: Path, events: list[dict]) -> dict:
    import duckdb

    with duckdb.connect(str(duckdb_path), read_only=True) as con:
        columns = ", ".join(("company_number", *COMPARED_COLUMNS))
        bulk = {r[0]: dict(zip(("company_number", *COMPARED_COLUMNS), r)) for r in con.execute(f"select {columns} from company_house_bulk").fetchall()}
        core = {r[0]: dict(zip(("company_number", *COMPARED_COLUMNS), r)) for r in con.execute(f"select {columns} from company_house_core").fetchall()}
        counts = {
            "stream rows": con.execute("select count(*) from company_house_stream").fetchone()[0],
            "rejects": con.execute("select count(*) from company_house_stream_rejects").fetchone()[0],
            "duplicate (partition, offset)": con.execute(
                "select count(*) from (select kafka_partition, kafka_offset from company_house_stream "
                "group by all having count(*) > 1)"
            ).fetchone()[0],
            "bulk rows": len(bulk),
            "core rows": len(core),
        }
        watermark = con.execute("select * from get_last_timestamp order by all").fetchall()
        landed = con.execute("select ingested_at, kafka_timestamp from company_house_stream").fetchall()
    expected = expected_core(bulk, events)
    mismatched = [n for n in expected.keys() | core.keys() if n not in core or n not in expected or _normalise(core[n]) != _normalise(expected[n])]
    return {"counts": counts, "watermark": watermark, "landed": landed, "expected": len(expected), "mismatched": sorted(mismatched)}


def latencies(landed: list[tuple[datetime, datetime]], core_runs: list[tuple[float, float]]) -> list[float]:
    """Seconds from the event entering Kafka to the end of the first dbt run that started after it landed."""
    result = []
    for ingested_at, kafka_timestamp in landed:
        if kafka_timestamp is None:
            continue
        landed_at = ingested_at.timestamp()
        done = next((end for start, end in core_runs if start >= landed_at), None)
        if done is not None:
            result.append(done - kafka_timestamp.timestamp())
    return result


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


@click.command("demo")
@click.option("--events", default=20_000, show_default=True, help="Distinct events the replay server serves.")
@click.option("--seed", default=LOCAL_SEED, show_default=True, help="Seed of the generated history.")
@click.option("--rate", default=1000.0, show_default=True, help="Events per second streamed by the replay server.")
@click.option("--bulk-rows", default=20_000, show_default=True, help="Companies in the generated bulk snapshot.")
@click.option("--sensor-interval", default=5, show_default=True, help="Seconds between sensor ticks.")
@click.option("--timeout", default=900, show_default=True, help="Give up after this many seconds.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the state here (default: a fresh temporary directory, removed afterwards).")  # fmt: skip
def demo_command(events: int, seed: int, rate: float, bulk_rows: int, sensor_interval: int, timeout: int, data_dir: Path | None) -> None:
    """Run the whole flow headless to completion, print a summary, exit 0 only if core matches the events.

    Broker, replay server, producer and the Dagster daemon (Kafka sensor -> stream partitions,
    automation sensor -> dbt) on a fresh state; then company_house_core is compared with the
    ground truth computed in Python from the served events and the bulk snapshot.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console()
    keep = data_dir is not None
    root = data_dir or Path(tempfile.mkdtemp(prefix="ch-demo-"))
    os.environ["CH_DATA_DIR"] = str(root)
    for name in ("CH_DUCKDB_PATH", "CH_CHECKPOINT_PATH", "KAFKA_CONFIG_FILE", "KAFKA_BOOTSTRAP_SERVERS"):
        os.environ.pop(name, None)
    settings = Settings.from_env()
    started = time.monotonic()
    stack = LocalStack(settings, events=events, rate=rate, seed=seed, kafka_port=free_port(), sensor_interval=sensor_interval)
    try:
        with stop_on_signals() as state:
            stack.start_kafka()
            stack.start_replay_server()
            served = [json.loads(line) for line in stack.replay.lines]
            env = stack.env()
            bulk_csv = root / "bulk.csv"
            from ch_pipeline.companies_house.bulk_csv import write_sample

            write_sample(bulk_csv, bulk_rows, seed=seed)
            env["CH_BULK_CSV"] = str(bulk_csv)
            stack.children.start("producer", [venv_executable("ch-pipeline"), "produce", "--max-events", str(len(served))],
                                 env, root / "producer.log")  # fmt: skip
            stack.children.start("dagster-daemon", [venv_executable("dagster-daemon"), "run", "-m", "ch_pipeline.definitions"],
                                 env, root / "dagster-daemon.log")  # fmt: skip
            os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
            import dagster as dg

            instance = dg.DagsterInstance.get()
            progress_state = DemoProgress()
            final_count = False
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=console) as bars:  # fmt: skip
                produced = bars.add_task("Kafka messages", total=len(served))
                landed = bars.add_task("landed in company_house_stream", total=len(served))
                dbt_runs = bars.add_task("dbt runs (snapshot -> core -> watermark)", total=None)
                while not progress_state.caught_up:
                    if state["stopping"]:
                        raise click.ClickException("interrupted")
                    if time.monotonic() - started > timeout:
                        raise click.ClickException(f"not caught up after {timeout}s; logs in {root}")
                    exited = stack.children.first_exited(ignore=("producer",))
                    if exited:
                        raise click.ClickException(f"{exited[0]} exited with code {exited[1]}; logs in {root}")
                    producer_done = stack.children.returncode("producer")
                    if producer_done not in (None, 0):
                        raise click.ClickException(f"the producer failed; see {root / 'producer.log'}")
                    # The topic's final size is known once the producer has exited; count it once then.
                    if producer_done is None or not final_count:
                        progress_state.messages = kafka_message_count(
                            {"bootstrap.servers": stack.broker.bootstrap_servers}, settings.kafka_topic
                        )
                        final_count = producer_done == 0
                    if producer_done is None:
                        progress_state.messages = min(progress_state.messages, len(served) - 1)  # not final yet
                    poll_instance(instance, progress_state)
                    bars.update(produced, completed=progress_state.messages)
                    bars.update(landed, total=max(progress_state.messages, 1), completed=progress_state.landed)
                    bars.update(dbt_runs, completed=len(progress_state.core_runs))
                    time.sleep(1.0)
            stack.children.stop("dagster-daemon")
        elapsed = time.monotonic() - started
        result = compare_core(settings.duckdb_path, served)
    finally:
        stack.stop()
    lat = latencies(result["landed"], progress_state.core_runs)
    print_summary(console, len(served), progress_state, result, elapsed, lat)
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    if result["mismatched"] or result["counts"]["duplicate (partition, offset)"]:
        raise click.ClickException(f"company_house_core differs from the ground truth for {len(result['mismatched'])} companies")
    console.print("[bold green]OK[/]: company_house_core equals the ground truth of the served events.")


def print_summary(console, served: int, progress: DemoProgress, result: dict, elapsed: float, lat: list[float]) -> None:
    from rich.table import Table

    table = Table(title="ch-pipeline demo", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    counts = result["counts"]
    p50, p95 = percentile(lat, 50), percentile(lat, 95)
    rows = [
        ("events served (incl. duplicates)", f"{served:,}"),
        ("messages in Kafka", f"{progress.messages:,}"),
        ("stream rows", f"{counts['stream rows']:,}"),
        ("rejects", f"{counts['rejects']:,}"),
        ("duplicate (partition, offset)", f"{counts['duplicate (partition, offset)']:,}"),
        ("bulk rows", f"{counts['bulk rows']:,}"),
        ("core rows (expected)", f"{counts['core rows']:,} ({result['expected']:,})"),
        ("core rows differing from ground truth", f"{len(result['mismatched']):,}"),
        ("watermark: last offset per Kafka partition", ", ".join(f"p{row[0]}: {row[1]:,}" for row in result["watermark"])),
        ("dbt runs", f"{len(progress.core_runs)}"),
        ("elapsed seconds", f"{elapsed:.1f}"),
        ("event -> core latency p50 / p95 (s)", f"{p50:.1f} / {p95:.1f}" if lat else "n/a"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
