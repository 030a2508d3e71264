"""``ch-pipeline run``: the whole pipeline on one machine, on embedded defaults.

Starts the local broker (memory storage), creates the topic, then ``dagster dev`` with the local
instance config (DuckDB concurrency pool), and stops every child on one Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from ch_pipeline.kafka.broker import BrokerError, LocalBroker, port_is_taken
from ch_pipeline.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCAL_INSTANCE_CONFIG = REPO_ROOT / "dagster.yaml"
TOPIC_PARTITIONS = 2


def prepare_dagster_home(data_dir: Path) -> Path:
    """A persistent local Dagster instance under CH_DATA_DIR, with the DuckDB pool settings."""
    home = data_dir / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(LOCAL_INSTANCE_CONFIG, home / "dagster.yaml")
    return home


class ChildProcesses:
    """Child processes started in their own process groups and all stopped together."""

    def __init__(self) -> None:
        self._children: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str], log_path: Path | None = None) -> subprocess.Popen:
        out = open(log_path, "ab") if log_path else None
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True)
        self._children.append((name, process))
        return process

    def first_exited(self) -> tuple[str, int] | None:
        for name, process in self._children:
            if process.poll() is not None:
                return name, process.returncode
        return None

    def stop_all(self, timeout: float = 20.0) -> None:
        for _, process in reversed(self._children):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for _, process in reversed(self._children):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@click.command("run")
@click.option("--port", default=3000, show_default=True, help="Dagster webserver port (bound to 127.0.0.1).")
@click.option("--kafka-port", default=9092, show_default=True, help="Local broker port.")
def run_command(port: int, kafka_port: int) -> None:
    """Run the pipeline locally: broker, Dagster UI with sensors and automation. Ctrl-C stops all."""
    settings = Settings.from_env()
    if port_is_taken(port):
        raise click.ClickException(f"port {port} is already in use: stop what holds it or pass --port")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    broker = LocalBroker(port=kafka_port, log_path=settings.data_dir / "broker.log")
    try:
        broker.start()
    except BrokerError as exc:
        raise click.ClickException(f"the local broker did not start: {exc}") from exc
    broker.create_topic(settings.kafka_topic, TOPIC_PARTITIONS)

    env = {
        **os.environ,
        "CH_DATA_DIR": str(settings.data_dir),
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "DAGSTER_HOME": str(prepare_dagster_home(settings.data_dir)),
    }
    children = ChildProcesses()
    stopping = False

    def request_stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        dagster = str(Path(sys.executable).parent / "dagster")
        children.start("dagster dev", [dagster, "dev", "-h", "127.0.0.1", "-p", str(port)], env)
        click.echo(f"broker:  KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers} (topic {settings.kafka_topic})")
        click.echo(f"Dagster: http://127.0.0.1:{port}/asset-groups   data: {settings.data_dir}")
        click.echo("Ctrl-C stops everything.")
        while not stopping:
            exited = children.first_exited()
            if exited:
                raise click.ClickException(f"{exited[0]} exited with code {exited[1]}; stopping the rest")
            if not broker.running:
                raise click.ClickException("the local broker exited; stopping the rest")
            time.sleep(0.5)
    finally:
        click.echo("stopping ...")
        children.stop_all()
        broker.stop()
        click.echo("stopped.")
