"""``ch-pipeline demo``: the local stack headless to completion, watched through the Dagster instance.

The same parts as ``ch-pipeline run`` (``ch_pipeline.local_stack``) on a fresh state, every stream of
the catalogue by default, with the daemon alone instead of ``dagster dev``; it polls Kafka and the
instance until, for every stream, every message has landed and a dbt build of the stream's model
started after its last landing has finished; then it judges the core and each stream's current-state
model (``ch_pipeline.demo_verdict``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from ch_pipeline.companies_house.streams import COMPANIES, STREAMS
from ch_pipeline.demo_verdict import compare_core, compare_stream_model, latencies, print_summary
from ch_pipeline.kafka.broker import free_port
from ch_pipeline.local_stack import LOCAL_SEED, STREAMS_HELP, LocalStack, parse_streams
from ch_pipeline.processes import stop_requested, venv_executable
from ch_pipeline.settings import Settings

# What a dbt run must have rebuilt to count as built after a landing: the core and the watermark for
# companies, the current-state model for another stream.
CORE_MODELS = ("company_house_core", "get_last_timestamp")


@dataclass
class DemoProgress:
    """One stream's way through the pipeline, as Kafka and the Dagster instance tell it."""

    landing_asset: str = "company_house_stream"
    models: tuple[str, ...] = CORE_MODELS
    messages: int = 0
    final_count: bool = False  # the producer has exited: ``messages`` is the topic's final size
    landed: int = 0
    last_landing_at: float | None = None
    core_runs: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of dbt runs building `models`

    @classmethod
    def of(cls, stream_name: str) -> "DemoProgress":
        spec = STREAMS[stream_name]
        return cls() if stream_name == COMPANIES else cls(spec.landing_table, (spec.current_model,))

    @property
    def caught_up(self) -> bool:
        return (
            self.final_count
            and self.messages > 0
            and self.landed >= self.messages
            and self.last_landing_at is not None
            and any(start >= self.last_landing_at for start, _ in self.core_runs)
        )


def poll_instance(instance, progress: DemoProgress) -> None:
    """What the Dagster instance knows of one stream: landed messages per landing, finished dbt runs."""
    import dagster as dg

    latest: dict[str, tuple[float, int]] = {}
    landed_in_run: dict[str, float] = {}  # a run that landed, then built the core (defs/stream.py)
    for record in instance.fetch_materializations(dg.AssetKey(progress.landing_asset), limit=10_000).records:
        landed_in_run[record.run_id] = max(landed_in_run.get(record.run_id, 0.0), record.timestamp)
        metadata = record.asset_materialization.metadata
        count = int(metadata["rows"].value) + int(metadata["rejects"].value)
        landing = metadata["landing"].value  # the offset ranges: a re-executed landing counts once
        if landing not in latest or latest[landing][0] < record.timestamp:
            latest[landing] = (record.timestamp, count)
    progress.landed = sum(count for _, count in latest.values())
    progress.last_landing_at = max((ts for ts, _ in latest.values()), default=None)
    # A dbt run counts once it has rebuilt every one of the stream's models. It sees what landed before it
    # started, and what its own run landed before the build.
    runs = [_materializing_runs(instance, model) for model in progress.models]
    progress.core_runs = sorted(
        (max(start, landed_in_run.get(run_id, start)), max(run[run_id][1] for run in runs))
        for run_id, (start, _) in runs[0].items() if all(run_id in run for run in runs)
    )  # fmt: skip


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


def watch_until_caught_up(stack: LocalStack, instance, progress: dict[str, DemoProgress], served: dict[str, int], stop,
                          deadline: float, root: Path, console) -> None:  # fmt: skip
    """Poll Kafka and the instance, with a progress bar per stream, until every stream is caught up."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    config = {"bootstrap.servers": stack.broker.bootstrap_servers}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bars:
        landed_bars = {name: bars.add_task(f"{STREAMS[name].landing_table} landed", total=served[name]) for name in progress}
        built_bars = {name: bars.add_task(f"  dbt runs building {', '.join(p.models)}", total=None) for name, p in progress.items()}
        while not all(p.caught_up for p in progress.values()):
            if stop.is_set():
                raise click.ClickException("interrupted")
            if time.monotonic() > deadline:
                behind = ", ".join(name for name, p in progress.items() if not p.caught_up)
                raise click.ClickException(f"not caught up in time ({behind}); logs in {root}")
            exited = stack.children.first_exited(ignore=stack.producers)
            if exited:
                raise click.ClickException(f"{exited[0]} exited with code {exited[1]}; logs in {root}")
            for name, p in progress.items():
                producer = stack.producer_name(name)
                done = stack.children.returncode(producer)
                if done not in (None, 0):
                    raise click.ClickException(f"{producer} failed; see {root / (producer + '.log')}")
                if not p.final_count:  # the topic's final size is known once its producer has exited
                    p.messages = kafka_message_count(config, stack.settings.stream_settings(name).topic)
                    p.final_count = done == 0
                poll_instance(instance, p)
                bars.update(landed_bars[name], total=max(p.messages, 1), completed=p.landed)
                bars.update(built_bars[name], completed=len(p.core_runs))
            stop.wait(1.0)


def wait_for_runs_to_end(instance, deadline: float, stop) -> None:
    """Let the runs in flight end before the daemon stops: a build's models are materialized before its
    tests have run and dbt has exited, and a run stopped there is recorded as failed."""
    import dagster as dg

    in_flight = dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED])
    while instance.get_runs_count(filters=in_flight) and time.monotonic() < deadline and not stop.is_set():
        stop.wait(0.5)


@click.command("demo")
@click.option("--events", default=20_000, show_default=True, help="Distinct company events the replay server serves.")
@click.option("--stream-events", default=1_000, show_default=True, help="Distinct events of each other stream.")
@click.option("--seed", default=LOCAL_SEED, show_default=True, help="Seed of the generated history.")
@click.option("--rate", default=1000.0, show_default=True, help="Events per second streamed by the replay server, per stream.")
@click.option("--bulk-rows", default=20_000, show_default=True, help="Companies in the generated bulk snapshot.")
@click.option("--sensor-interval", default=5, show_default=True, help="Seconds between companies Kafka/automation sensor ticks.")
@click.option("--streams-sensor-interval", type=int, default=None, help="Seconds between each other stream's sensor ticks (default: --sensor-interval).")
@click.option("--streams", "streams_option", default="all", show_default=True, help=STREAMS_HELP)
@click.option("--timeout", default=900, show_default=True, help="Give up after this many seconds.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the state here (default: a fresh temporary directory, removed afterwards).")  # fmt: skip
def demo_command(events: int, stream_events: int, seed: int, rate: float, bulk_rows: int, sensor_interval: int,
                 streams_sensor_interval: int | None, streams_option: str, timeout: int, data_dir: Path | None) -> None:  # fmt: skip
    """Run the whole flow headless to completion, print a summary, exit 0 only if every model matches the events.

    Broker, replay server, a producer per stream and the Dagster daemon (Kafka sensors -> landing
    runs, automation sensor -> dbt) on a fresh state; then company_house_core is compared with the
    ground truth computed in Python from the served events and the bulk snapshot, and each other
    stream's current-state model with the ground truth of its served events.
    """
    from rich.console import Console

    # Captured or piped output gets rich's 80 columns: too narrow for the per-stream table.
    console = Console() if Console().is_terminal else Console(width=120)
    streams = parse_streams(streams_option)
    keep = data_dir is not None
    root = data_dir or Path(tempfile.mkdtemp(prefix="ch-demo-"))
    os.environ["CH_DATA_DIR"] = str(root)
    # Only the demo's own state and broker: no path, topic or URL configured for another setup.
    for name in list(os.environ):
        if name.startswith(("CH_DUCKDB_PATH", "CH_CHECKPOINT_PATH", "KAFKA_TOPIC", "CH_STREAM_URL_")) or name in (
            "KAFKA_CONFIG_FILE", "KAFKA_BOOTSTRAP_SERVERS"):  # fmt: skip
            os.environ.pop(name)
    settings = Settings.from_env()
    started = time.monotonic()
    stack = LocalStack(settings, events=events, rate=rate, seed=seed, kafka_port=free_port(), sensor_interval=sensor_interval,
                       streams_sensor_interval=streams_sensor_interval or sensor_interval, streams=streams, stream_events=dict.fromkeys(streams[1:], stream_events))  # fmt: skip
    try:
        with stop_requested() as stop:
            stack.start_kafka()
            stack.start_replay_server()
            served = {name: [json.loads(line) for line in stack.replay.log(name).lines] for name in streams}
            env = stack.env()
            from ch_pipeline.companies_house.bulk_csv import SAMPLE_FILE_DATE, published_name, write_sample

            bulk_csv = root / published_name(SAMPLE_FILE_DATE, ".csv")  # the file the replay's history follows
            write_sample(bulk_csv, bulk_rows, seed=seed)
            os.environ["CH_BULK_CSV"] = str(bulk_csv)  # stack.env() passes it to every child
            stack.start_producers(max_events={name: len(events_) for name, events_ in served.items()})
            stack.children.start("dagster-daemon", [venv_executable("dagster-daemon"), "run", "-m", "ch_pipeline.definitions"],
                                 stack.env(), root / "dagster-daemon.log")  # fmt: skip
            os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
            import dagster as dg

            instance = dg.DagsterInstance.get()
            progress = {name: DemoProgress.of(name) for name in streams}
            counts = {name: len(events_) for name, events_ in served.items()}
            watch_until_caught_up(stack, instance, progress, counts, stop, started + timeout, root, console)
            wait_for_runs_to_end(instance, started + timeout, stop)
            stack.children.stop("dagster-daemon")
        elapsed = time.monotonic() - started
        result = compare_core(settings.duckdb_path, served[COMPANIES])
        others = {name: {**compare_stream_model(settings.duckdb_path, STREAMS[name], served[name]),
                         "served": len(served[name]), "messages": progress[name].messages} for name in streams[1:]}  # fmt: skip
    finally:
        stack.stop()
    companies = progress[COMPANIES]
    lat = latencies(result["landed"], companies.core_runs)
    print_summary(console, len(served[COMPANIES]), companies, result, elapsed, lat, others)
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    if result["mismatched"] or result["counts"]["duplicate (partition, offset)"]:
        raise click.ClickException(f"company_house_core differs from the ground truth for {len(result['mismatched'])} companies")
    differing = {outcome["model"]: len(outcome["mismatched"]) for outcome in others.values() if outcome["mismatched"]}
    if differing:
        raise click.ClickException(f"stream models differ from the ground truth: {differing} items")
    models = " and every stream's current-state model" if others else ""
    console.print(f"[bold green]OK[/]: company_house_core{models} {'equal' if others else 'equals'} the ground truth of the served events.", soft_wrap=True)
