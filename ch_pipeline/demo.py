"""``ch-pipeline demo``: the local stack headless to completion, watched through the Dagster instance.

The same parts as ``ch-pipeline run`` (``ch_pipeline.local_stack``) on a fresh state, with the daemon
alone instead of ``dagster dev``; it polls Kafka and the instance until every message has landed and
a dbt build started after the last landing has finished, then judges the core
(``ch_pipeline.demo_verdict``).
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

from ch_pipeline.demo_verdict import compare_core, latencies, print_summary
from ch_pipeline.kafka.broker import free_port
from ch_pipeline.local_stack import LOCAL_SEED, LocalStack
from ch_pipeline.processes import stop_requested, venv_executable
from ch_pipeline.settings import Settings


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
    """What the Dagster instance knows: landed messages per landing and finished dbt runs."""
    import dagster as dg

    latest: dict[str, tuple[float, int]] = {}
    for record in instance.fetch_materializations(dg.AssetKey("company_house_stream"), limit=10_000).records:
        materialization = record.asset_materialization
        metadata = materialization.metadata
        count = int(metadata["rows"].value) + int(metadata["rejects"].value)
        # A landing names its offset ranges in its metadata (the stream asset is not partitioned).
        landing = metadata["landing"].value if "landing" in metadata else materialization.partition
        if landing not in latest or latest[landing][0] < record.timestamp:
            latest[landing] = (record.timestamp, count)
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

    Broker, replay server, producer and the Dagster daemon (Kafka sensor -> landing runs,
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
        with stop_requested() as stop:
            stack.start_kafka()
            stack.start_replay_server()
            served = [json.loads(line) for line in stack.replay.lines]
            env = stack.env()
            from ch_pipeline.companies_house.bulk_csv import SAMPLE_FILE_DATE, published_name, write_sample

            bulk_csv = root / published_name(SAMPLE_FILE_DATE, ".csv")  # the file the replay's history follows

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
                    if stop.is_set():
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
                    stop.wait(1.0)
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

