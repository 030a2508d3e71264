"""The production topology of ``docker-compose.yml``, run for real as processes of this machine (no Docker).

``ch-pipeline prod-local`` (``make prod-local``) and the tests in ``ch_pipeline_tests/production/``
use this module. Each service's command, env files, ``environment:``, volumes, secret mounts and
``depends_on`` conditions are read from the compose file, and the image's environment and working
directory from the ``Dockerfile`` (``ch_pipeline.compose_project``, where ``on_this_machine`` turns what
a container would see into what a process here needs). Each service is a ``ch_pipeline.processes.Child``.

What stands in for what: ``postgres`` is a throwaway Postgres cluster (``PostgresCluster``: initdb
as an unprivileged user, loopback only); ``kafka`` is the local broker (tansu) and ``replay-server``
the replay server, both as the self-contained profiles (``--profile kafka --profile replay``) would
have them (the replay server serves every stream: each producer service follows its own); the image
is a copy of what the Dockerfile COPYs, with the dbt manifest parsed the way its build does. The env
files are ``deploy/*.env.example`` filled in with the README's self-contained values (DuckDB
warehouse), the secret files are empty, root-owned, mode 0640.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from ch_pipeline.companies_house.streams import COMPANIES
from ch_pipeline.compose_project import (REPO_ROOT, Placement, dockerfile, fill_env_template, image_env, on_this_machine,
                                         producer_services, read_compose, read_env_file, self_contained_values)  # fmt: skip
from ch_pipeline.kafka.broker import LocalBroker, free_port, port_is_taken
from ch_pipeline.postgres_cluster import PostgresCluster
from ch_pipeline.production_image import ImageCopy
from ch_pipeline.processes import Child, StartedInWith, stop_children, stop_requested

VENV_BIN = Path(sys.executable).parent
# {service: stream}: every producer of the compose file, one per stream.
PRODUCERS = producer_services(read_compose())
# Run by ProductionStack, in the compose file's order (depends_on decides when each may start).
SERVICES = ("dagster-migrate", "kafka-topic", "ch-pipeline-code", "dagster-webserver", "dagster-daemon", *PRODUCERS)
# Started here instead of their images, on a free loopback port each: {service: the image's port}.
STAND_INS = {"postgres": 5432, "kafka": 9092, "replay-server": 8765}
DEFAULT_GRACE = 10.0  # docker compose's default stop_grace_period


# --- the stack -----------------------------------------------------------------------------------------


class ProductionStack(StartedInWith):
    """``docker-compose.yml``'s services as local processes; ``with ProductionStack(root, ...) as stack:``."""

    def __init__(self, root: Path, events: int = 1000, rate: float | None = 20.0, seed: int = 7, bulk_rows: int = 2000,
                 sensor_interval: int | None = 2, web_port: int | None = None, postgres: PostgresCluster | None = None,
                 stream_events: dict[str, int] | None = None, streams_sensor_interval: int | None = None) -> None:  # fmt: skip
        """``events``: the companies history; ``stream_events``: another stream's (default ``events``)."""
        self.root = root
        self.compose = read_compose()
        self.events, self.rate, self.seed, self.bulk_rows = events, rate, seed, bulk_rows
        self.stream_events = dict(stream_events or {})
        self.password = postgres.password if postgres else secrets.token_hex(16)
        self.values = self_contained_values(self.password, sensor_interval, streams_sensor_interval)
        self.postgres = postgres
        self.own_postgres = postgres is None
        self.web_port = web_port
        self.services: dict[str, Child] = {}
        self.broker: LocalBroker | None = None
        self.replay = None
        self.place: Placement | None = None
        self.image = ImageCopy(root / "image")

    # --- paths and endpoints
    def env_of(self, name: str) -> dict[str, str]:
        """The environment compose gives service ``name``: image ENV < env files < ``environment:``, mapped."""
        service = self.compose["services"][name]
        env = {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", **image_env()}
        for entry in service.get("env_file") or []:
            env.update(read_env_file(self.root / (entry if isinstance(entry, str) else entry["path"])))
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        env.update({k: str(v) for k, v in environment.items()})
        env = {k: on_this_machine(v, service, self.place) for k, v in env.items()}
        # The image's `pip install -e .`: ch_pipeline is imported from the image's copy; HOME as in the
        # image (the runtime user's home is the working directory).
        workdir = self.workdir(service)
        return {**env, "PYTHONPATH": str(workdir), "HOME": str(workdir)}

    def workdir(self, service: dict) -> Path:
        return Path(on_this_machine([op for op in dockerfile() if op[0] == "WORKDIR"][-1][1], service, self.place))

    @property
    def home(self) -> Path:
        return Path(on_this_machine(image_env()["DAGSTER_HOME"], self.compose["services"]["ch-pipeline-code"], self.place))

    @property
    def duckdb_path(self) -> Path:
        return Path(self.env_of("ch-pipeline-code")["CH_DATA_DIR"]) / "warehouse.duckdb"  # settings.py's default

    def stream_target(self, producer: str):
        """The URL, topic and checkpoint producer service ``producer`` follows: its own Settings, from its environment."""
        from unittest import mock

        from ch_pipeline.settings import Settings

        with mock.patch.dict(os.environ, self.env_of(producer), clear=True):
            return Settings.from_env().stream_settings(PRODUCERS[producer])

    @property
    def compute_logs(self) -> Path:
        return self.root / "volumes" / "dagster-compute-logs"

    @property
    def grpc_port(self) -> int:
        argv = self.compose["services"]["ch-pipeline-code"]["command"]
        return self.place.ports[int(argv[argv.index("-p") + 1])]

    @property
    def web_url(self) -> str:
        argv = self.compose["services"]["dagster-webserver"]["command"]
        return f"http://127.0.0.1:{self.place.ports[int(argv[argv.index('-p') + 1])]}"

    def postgres_env(self) -> dict[str, str]:
        """The instance's variables as the Dagster services get them (for a DagsterInstance here)."""
        env = self.env_of("dagster-daemon")
        return {k: v for k, v in env.items() if k.startswith("POSTGRES_")}

    def instance(self):
        """A DagsterInstance on the stack's Postgres storage (the config is resolved at construction)."""
        import dagster as dg

        saved = {k: os.environ.get(k) for k in self.postgres_env()}
        os.environ.update(self.postgres_env())
        try:
            return dg.DagsterInstance.from_config(str(self.home))
        finally:
            for key, value in saved.items():
                os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)

    # --- lifecycle
    def start(self, log=lambda message: None) -> None:
        from ch_pipeline.companies_house.bulk_csv import SAMPLE_FILE_DATE, published_name, write_sample
        from ch_pipeline.companies_house.replay_server import ReplayServer

        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o711)  # the Postgres user must reach its directory below; nothing here is listable
        for sub in ("logs", "tmp", "deploy/secrets", *(f"volumes/{v}" for v in self.compose.get("volumes", {}))):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        if self.postgres is None:
            env = read_env_file(REPO_ROOT / "deploy" / "postgres.env.example") | self.values["postgres"]
            self.postgres = PostgresCluster(self.root / "postgres", env["POSTGRES_USER"], self.password, env["POSTGRES_DB"])
            log(f"postgres: initdb + pg_ctl start on 127.0.0.1:{self.postgres.port}")
            self.postgres.start()
        self.broker = LocalBroker(log_path=self.root / "logs" / "kafka.log").start()
        self.replay = ReplayServer(events=self.events, seed=self.seed, rate=self.rate, heartbeat_interval=1.0,
                                   stream_events=self.stream_events).start()  # fmt: skip
        ports = {STAND_INS["postgres"]: self.postgres.port, STAND_INS["kafka"]: self.broker.port, STAND_INS["replay-server"]: self.replay.port}
        for name, service in self.compose["services"].items():
            declared = [int(str(p).split(":")[-1]) for p in (*service.get("expose", ()), *service.get("ports", ()))]
            for container_port in declared:
                if container_port not in ports:
                    ports[container_port] = self.web_port if name == "dagster-webserver" and self.web_port else free_port()
        self.place = Placement(self.root, ports, set(self.compose["services"]))
        self._write_project()
        write_sample(self.root / "volumes" / "ch-data" / published_name(SAMPLE_FILE_DATE, ".csv"), self.bulk_rows, seed=self.seed)
        workdir = self.workdir(self.compose["services"]["ch-pipeline-code"])
        parse = self.image.build(self.compose["services"]["ch-pipeline-code"], self.place, workdir, self.root / "logs")
        try:
            for name in SERVICES:
                self._start_when_ready(name, log, parse)
        finally:
            parse.stop()
        self._wait_webserver()

    def _wait_webserver(self, timeout: float = 120.0) -> None:
        """Until the UI answers (compose has no healthcheck for it: `depends_on` cannot wait for it)."""
        import requests

        deadline = time.monotonic() + timeout
        while True:
            webserver = self.services["dagster-webserver"]
            if webserver.returncode is not None:
                raise RuntimeError(f"dagster-webserver exited with code {webserver.returncode}:\n{webserver.tail()}")
            try:
                if requests.get(f"{self.web_url}/server_info", timeout=5).ok:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"dagster-webserver did not answer within {timeout:.0f}s:\n{webserver.tail()}")
            time.sleep(0.5)

    def _write_project(self) -> None:
        """deploy/*.env from their templates with our values (0600), and the secret files (empty, 0640)."""
        for name, values in self.values.items():
            path = self.root / "deploy" / f"{name}.env"
            path.write_text(fill_env_template(REPO_ROOT / "deploy" / f"{name}.env.example", values))
            path.chmod(0o600)
        for name in ("kafka.ini", "gcp-service-account.json"):
            (self.root / "deploy" / "secrets" / name).touch(mode=0o640)

    def image_changes(self) -> set[str]:
        return self.image.changes()

    def _start_when_ready(self, name: str, log, parse: Child) -> None:
        service = self.compose["services"][name]
        for dep, condition in (service.get("depends_on") or {}).items():
            self._wait_for(dep, condition["condition"] if isinstance(condition, dict) else "service_started")
        if name == "ch-pipeline-code":
            if parse.process.wait(timeout=300) != 0:
                raise RuntimeError(f"the image's dbt parse failed: see {parse.log}")
            self.image.built(self.workdir(service) / "ch_dbt")  # what the build's dbt parse wrote
        argv = self.command(service["command"], service)
        grace = float(str(service.get("stop_grace_period", f"{DEFAULT_GRACE}s")).rstrip("s"))
        log(f"{name}: {shlex.join(service['command'])}")
        self.services[name] = Child(name, argv, self.env_of(name), self.workdir(service), self.root / "logs" / f"{name}.log",
                                    grace, announce=True).start()

    def command(self, argv: list[str], service: dict) -> list[str]:
        """A command of the compose file: the program from the venv (the image's PATH), its arguments mapped."""
        beside = VENV_BIN / argv[0]
        return [str(beside) if beside.exists() else argv[0], *on_this_machine(list(argv[1:]), service, self.place)]

    def _wait_for(self, dep: str, condition: str, timeout: float = 180.0) -> None:
        if dep in STAND_INS:
            return  # started (and ready) before any service
        child = self.services[dep]
        deadline = time.monotonic() + timeout
        while condition != "service_started":
            code = child.returncode
            if condition == "service_completed_successfully" and code is not None:
                if code != 0:
                    raise RuntimeError(f"{dep} exited with code {code}:\n{child.tail()}")
                return
            if code is not None:
                raise RuntimeError(f"{dep} exited with code {code} before it was healthy:\n{child.tail()}")
            if condition == "service_healthy" and self._healthy(dep):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{dep} not {condition} after {timeout:.0f}s:\n{child.tail()}")
            time.sleep(3.0 if condition == "service_healthy" else 0.5)  # a healthcheck is a process of its own

    def _healthy(self, name: str) -> bool:
        """The service's compose healthcheck, run as the container would (its command and environment)."""
        service = self.compose["services"][name]
        test = service["healthcheck"]["test"]
        argv = self.command(test[1:] if test[0] == "CMD" else ["sh", "-c", test[1]], service)
        try:
            return subprocess.run(argv, env=self.env_of(name), cwd=self.workdir(service), capture_output=True, timeout=30).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def stop(self) -> None:
        stop_children(self.services.values())
        if self.replay is not None:
            self.replay.stop()
        if self.broker is not None:
            self.broker.stop()
        if self.own_postgres and self.postgres is not None:
            self.postgres.stop()


@click.command("prod-local")
@click.option("--port", default=3000, show_default=True, help="Dagster webserver port (127.0.0.1).")
@click.option("--events", default=20_000, show_default=True, help="Events in the replay server's companies history.")
@click.option("--stream-events", default=2_000, show_default=True, help="Events in each other stream's history.")
@click.option("--rate", default=20.0, show_default=True, help="Events per second streamed by the replay server, per stream.")
@click.option("--sensor-interval", default=None, type=int, help="CH_SENSOR_INTERVAL_SECONDS for the code server (default: production's).")
@click.option("--streams-sensor-interval", default=None, type=int,
              help="CH_STREAMS_SENSOR_INTERVAL_SECONDS for the code server: the other streams' sensors (default: production's).")
def prod_local_command(port: int, events: int, stream_events: int, rate: float, sensor_interval: int | None,
                       streams_sensor_interval: int | None) -> None:  # fmt: skip
    """Run docker-compose.yml's services as local processes, on a throwaway Postgres. Ctrl-C stops all.

    Self-contained: the local broker stands in for Kafka, the replay server for the Companies House
    stream, DuckDB for BigQuery. Everything lives in a temporary directory, removed at the end.
    """
    if port and port_is_taken(port):
        raise click.ClickException(f"port {port} is already in use: stop what holds it or pass --port")
    root = Path(tempfile.mkdtemp(prefix="ch-prod-local-"))
    others = {stream: stream_events for stream in PRODUCERS.values()}
    others.pop(COMPANIES, None)
    stack = ProductionStack(root, events=events, rate=rate, sensor_interval=sensor_interval, web_port=port,
                            stream_events=others, streams_sensor_interval=streams_sensor_interval)  # fmt: skip
    failed = True
    with stop_requested() as stop:
        try:
            try:
                stack.start(log=click.echo)
            except RuntimeError as exc:
                raise click.ClickException(str(exc)) from exc
            click.echo(f"Dagster UI: {stack.web_url}  (logs: {root / 'logs'}; env files: {root / 'deploy'})")
            click.echo("Ctrl-C stops everything.")
            while not stop.is_set():
                exited = [(n, s.returncode) for n, s in stack.services.items() if n not in ("dagster-migrate", "kafka-topic") and s.returncode is not None]
                if exited:
                    raise click.ClickException(f"{exited[0][0]} exited with code {exited[0][1]}; see {root / 'logs'}")
                stop.wait(0.5)
            failed = False
        finally:
            click.echo("stopping ...")
            stack.stop()
            if failed:
                click.echo(f"logs kept in {root / 'logs'}")
            else:
                shutil.rmtree(root, ignore_errors=True)
            click.echo("stopped.")
