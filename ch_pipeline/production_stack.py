"""The production topology of ``docker-compose.yml``, run for real as processes of this machine (no Docker).

``ch-pipeline prod-local`` (``make prod-local``) and the tests in ``ch_pipeline_tests/production/``
use this module. Each service's command, env files, ``environment:``, volumes, secret mounts and
``depends_on`` conditions are read from the compose file, and the image's environment and working
directory from the ``Dockerfile``; ``on_this_machine`` is the one place that turns what a container
would see (service names, container ports, container paths) into what a process here needs.

What stands in for what: ``postgres`` is a throwaway Postgres cluster (``PostgresCluster``: initdb
as an unprivileged user, loopback only); ``kafka`` is the local broker (tansu) and ``replay-server``
the replay server, both as the self-contained profiles (``--profile kafka --profile replay``) would
have them; the image is a copy of what the Dockerfile COPYs, with the dbt manifest parsed the way
its build does. The env files are ``deploy/*.env.example`` filled in with the README's
self-contained values (DuckDB warehouse), the secret files are empty, root-owned, mode 0640.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import yaml

from ch_pipeline.kafka.broker import LocalBroker, free_port, port_is_taken

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# Run by ProductionStack, in the compose file's order (depends_on decides when each may start).
SERVICES = ("dagster-migrate", "kafka-topic", "ch-pipeline-code", "dagster-webserver", "dagster-daemon", "producer")
# Started here instead of their images, on a free loopback port each: {service: the image's port}.
STAND_INS = {"postgres": 5432, "kafka": 9092, "replay-server": 8765}
POSTGRES_OS_USER = "chpg"  # Postgres refuses to run as root: initdb and the server run as this user
DEFAULT_GRACE = 10.0  # docker compose's default stop_grace_period


def self_contained_values(password: str, sensor_interval: int | None) -> dict[str, dict[str, str]]:
    """What goes into each ``deploy/<name>.env`` (over its ``.example``): README "Self-contained".

    Container names and paths, as an operator writes them; ``on_this_machine`` maps them.
    """
    pipeline = {"CH_WAREHOUSE": "duckdb", "DBT_TARGET": "duckdb", "CH_BULK_CSV": "/var/lib/ch-pipeline/bulk.csv"}
    if sensor_interval:
        pipeline["CH_SENSOR_INTERVAL_SECONDS"] = str(sensor_interval)  # read by the code server
    return {
        "postgres": {"POSTGRES_PASSWORD": password},
        "kafka": {"KAFKA_CONFIG_FILE": "", "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092"},
        "producer": {"CH_STREAM_URL": "http://replay-server:8765/companies", "CH_STREAM_API_KEY": ""},
        "pipeline": pipeline,
    }


# --- the one mapping: container -> this machine ------------------------------------------------------


@dataclass
class Placement:
    """Where the compose project's names, ports and paths are on this machine."""

    root: Path  # <root>/image: the image's file system; <root>/volumes/<name>; <root>/deploy: the project's
    ports: dict[int, int]  # container port -> loopback port (container ports are unique in the compose file)
    hosts: set[str]  # compose service names


def on_this_machine(value, service: dict, place: Placement, is_port: bool = False):
    """A value as a container of ``service`` sees it -> what a process of this machine needs instead.

    Why: compose gives every container its own network namespace and file system. There a service is
    reached by its name (compose's DNS) on its own container port, binds 0.0.0.0, and finds the image's
    directories, its named volumes and its bind-mounted secret files at fixed paths. Here all processes
    share one loopback interface and one file system, so:
    - a service name is 127.0.0.1 and a container port that service's loopback port (``postgres`` and
      ``port: 5432`` -> the throwaway cluster; ``kafka:9092`` -> the local broker);
    - 0.0.0.0 is 127.0.0.1: nothing listens on every interface of a shared machine;
    - a container path is what is mounted there *for this service* (ch-data and producer-state are both
      at /var/lib/ch-pipeline), else the image's copy under <root>/image; /tmp is <root>/tmp.
    ``is_port``: the value is a port number (a ``port:`` key, or the argument of -p/--port).
    """
    if isinstance(value, dict):
        return {k: on_this_machine(v, service, place, is_port=k == "port") for k, v in value.items()}
    if isinstance(value, list):
        return [on_this_machine(v, service, place, is_port=i > 0 and value[i - 1] in ("-p", "--port")) for i, v in enumerate(value)]
    if is_port and str(value).isdigit():
        return type(value)(place.ports[int(value)])
    if not isinstance(value, str):
        return value
    if value in place.hosts or value == "0.0.0.0":
        return "127.0.0.1"
    if value.startswith("/"):
        mounts = {m["target"]: m["host"] for m in service_mounts(service, place)}
        target = max((t for t in mounts if value == t or value.startswith(t.rstrip("/") + "/")), key=len, default=None)
        if target is not None:
            return str(mounts[target]) + value[len(target):]
        return str(place.root / ("tmp" if value == "/tmp" or value.startswith("/tmp/") else "image") / value.lstrip("/"))
    names = "|".join(re.escape(h) for h in sorted(place.hosts, key=len, reverse=True))
    return re.sub(rf"\b({names}):(\d+)\b", lambda m: f"127.0.0.1:{place.ports[int(m.group(2))]}", value)


def service_mounts(service: dict, place: Placement) -> list[dict]:
    """The service's volumes as {target, host}: a named volume is <root>/volumes/<name>, a bind source
    is relative to the project directory (<root>, which holds deploy/*.env and deploy/secrets/)."""
    result = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, str):
            source, target = entry.split(":")[:2]
            entry = {"type": "bind" if source.startswith((".", "/")) else "volume", "source": source, "target": target}
        host = place.root / "volumes" / entry["source"] if entry["type"] == "volume" else place.root / entry["source"]
        if not host.exists():  # compose does not start a service whose bind source is missing
            raise click.ClickException(f"{host}: mounted at {entry['target']}, does not exist")
        result.append({"target": entry["target"], "host": host})
    return result


# --- compose and Dockerfile --------------------------------------------------------------------------


def read_compose(path: Path = REPO_ROOT / "docker-compose.yml") -> dict:
    return yaml.safe_load(path.read_text())


def dockerfile(path: Path = REPO_ROOT / "Dockerfile") -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def image_env() -> dict[str, str]:
    """The Dockerfile's ENV (every container of our image starts with it), ${VAR} expanded."""
    env: dict[str, str] = {}
    for op, arg in dockerfile():
        if op == "ENV":
            for key, value in (pair.split("=", 1) for pair in shlex.split(arg)):
                env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)
    return env


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def fill_env_template(template: Path, values: dict[str, str]) -> str:
    """The template with ``values`` set (keys it lacks are appended): what an operator's copy holds."""
    lines, left = [], dict(values)
    for line in template.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith("#") and key in left:
            line = f"{key}={left.pop(key)}"
        lines.append(line)
    lines += ["# added for this local run"] * bool(left) + [f"{k}={v}" for k, v in left.items()]
    return "\n".join(lines) + "\n"


# --- Postgres -----------------------------------------------------------------------------------------


def postgres_bin_dir() -> Path | None:
    """Where initdb, pg_ctl and postgres are (Debian's postgresql-NN, newest first, or PATH)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(re.sub(r"\D", "", p) or 0), reverse=True)
    if shutil.which("pg_ctl"):
        candidates.append(str(Path(shutil.which("pg_ctl")).parent))
    return next((Path(d) for d in candidates if all((Path(d) / b).exists() for b in ("initdb", "pg_ctl", "postgres"))), None)


def unprivileged_user(name: str) -> tuple[int, int] | None:
    """(uid, gid) to run a server as: ``name`` (a system user, created if missing) when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
                       check=True, capture_output=True)  # fmt: skip
        entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


@dataclass
class PostgresCluster:
    """A throwaway cluster on a free loopback port: ``user`` (superuser, password auth over TCP) and ``db``."""

    root: Path
    user: str
    password: str = field(repr=False)
    db: str
    port: int = field(default_factory=free_port)
    bin_dir: Path | None = field(default_factory=postgres_bin_dir)
    started: bool = field(default=False, init=False)

    def _run(self, *argv: str, timeout: float = 120) -> None:
        ids = unprivileged_user(POSTGRES_OS_USER)
        kwargs = {"user": ids[0], "group": ids[1], "extra_groups": []} if ids else {}
        env = {"PATH": f"{self.bin_dir}:/usr/bin:/bin", "LC_ALL": "C", "PGPASSWORD": self.password}
        # Its own session: the server pg_ctl leaves behind gets no Ctrl-C meant for us.
        result = subprocess.run([str(self.bin_dir / argv[0]), *argv[1:]], env=env, cwd=self.root, capture_output=True, text=True,
                                timeout=timeout, start_new_session=True, **kwargs)  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stdout[-2000:]}{result.stderr[-2000:]}")

    def start(self) -> "PostgresCluster":
        if self.bin_dir is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: apt-get install postgresql-15")
        self.root.mkdir(parents=True)
        (self.root / "pwfile").write_text(self.password + "\n")
        ids = unprivileged_user(POSTGRES_OS_USER)
        if ids:
            for path in (self.root, self.root / "pwfile"):
                os.chown(path, *ids)
        self.root.chmod(0o700)
        # As the postgres image does: POSTGRES_USER is the superuser, passwords over TCP (scram).
        self._run("initdb", "-D", "data", "-U", self.user, "--pwfile", "pwfile", "-A", "scram-sha-256", "--auth-local", "trust",
                  "-E", "UTF8", "--locale", "C", "--no-sync")  # fmt: skip
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root}"
        self.started = True
        self._run("pg_ctl", "-D", "data", "-l", "postgres.log", "-w", "-t", "60", "-o", options, "start")
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, self.db)
        return self

    def stop(self) -> None:
        if self.started and (self.root / "data" / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "-D", "data", "-m", "fast", "-w", "-t", "20", "stop", timeout=30)
            except (RuntimeError, subprocess.TimeoutExpired):
                pid = int((self.root / "data" / "postmaster.pid").read_text().split()[0])
                _signal(pid, signal.SIGKILL, group=False)
        self.started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PostgresCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --- processes -----------------------------------------------------------------------------------------


def _signal(pid: int, sig: int, group: bool = True) -> None:
    try:
        os.killpg(pid, sig) if group else os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class Service:
    """One compose service as a process in its own process group, logging to a file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log: Path
    grace: float = DEFAULT_GRACE
    process: subprocess.Popen | None = None

    def start(self) -> "Service":
        with self.log.open("ab") as out:
            out.write(f"$ {shlex.join(self.argv)}\n".encode())
            out.flush()
            self.process = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        return self

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""


def stop_services(services: list[Service]) -> None:
    """SIGTERM every group, wait out the grace periods together, then SIGKILL the groups and any stray descendant."""
    import psutil

    running = [s for s in services if s.returncode is None]
    family = []
    for service in running:
        try:
            family += psutil.Process(service.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        _signal(service.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + max((s.grace for s in running), default=0)
    for service in running:
        try:
            service.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for service in services:
        if service.process is not None:
            _signal(service.process.pid, signal.SIGKILL)
            service.process.wait()
    for process in family:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


# --- the stack -----------------------------------------------------------------------------------------


class ProductionStack:
    """``docker-compose.yml``'s services as local processes; ``with ProductionStack(root, ...) as stack:``."""

    def __init__(self, root: Path, events: int = 1000, rate: float | None = 20.0, seed: int = 7, bulk_rows: int = 2000,
                 sensor_interval: int | None = 2, web_port: int | None = None, postgres: PostgresCluster | None = None) -> None:  # fmt: skip
        self.root = root
        self.compose = read_compose()
        self.events, self.rate, self.seed, self.bulk_rows = events, rate, seed, bulk_rows
        self.password = postgres.password if postgres else secrets.token_hex(16)
        self.values = self_contained_values(self.password, sensor_interval)
        self.postgres = postgres
        self.own_postgres = postgres is None
        self.web_port = web_port
        self.services: dict[str, Service] = {}
        self.broker: LocalBroker | None = None
        self.replay = None
        self.place: Placement | None = None
        self._image: dict[str, int] = {}

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

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.env_of("producer")["CH_CHECKPOINT_PATH"])

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
    def __enter__(self) -> "ProductionStack":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, log=lambda message: None) -> None:
        from ch_pipeline.companies_house.bulk_csv import write_sample
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
        self.replay = ReplayServer(events=self.events, seed=self.seed, rate=self.rate, heartbeat_interval=1.0).start()
        ports = {STAND_INS["postgres"]: self.postgres.port, STAND_INS["kafka"]: self.broker.port, STAND_INS["replay-server"]: self.replay.port}
        for name, service in self.compose["services"].items():
            declared = [int(str(p).split(":")[-1]) for p in (*service.get("expose", ()), *service.get("ports", ()))]
            for container_port in declared:
                if container_port not in ports:
                    ports[container_port] = self.web_port if name == "dagster-webserver" and self.web_port else free_port()
        self.place = Placement(self.root, ports, set(self.compose["services"]))
        self._write_project()
        write_sample(self.root / "volumes" / "ch-data" / "bulk.csv", self.bulk_rows, seed=self.seed)
        parse = self._build_image()
        try:
            for name in SERVICES:
                self._start_when_ready(name, log, parse)
        finally:
            if parse.poll() is None:
                parse.kill()
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

    def _build_image(self) -> subprocess.Popen:
        """The image's files: what the Dockerfile COPYs (the instance and workspace config mapped), and
        its `dbt parse` step, started in the background (only the code server needs the manifest)."""
        service = self.compose["services"]["ch-pipeline-code"]
        workdir = self.workdir(service)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "target", "logs", "dbt_packages", "*.egg-info")
        for op, arg in dockerfile():
            if op != "COPY":
                continue
            *sources, dest = [part for part in arg.split() if not part.startswith("--")]
            dest = re.sub(r"\$\{?(\w+)\}?", lambda m: image_env()[m.group(1)], dest)
            target = Path(on_this_machine(dest if dest.startswith("/") else f"/{workdir.relative_to(self.root / 'image')}/{dest}",
                                          service, self.place))  # fmt: skip
            for source in sources:
                to = target / Path(source).name if dest.endswith("/") or len(sources) > 1 else target
                to.parent.mkdir(parents=True, exist_ok=True)
                if (REPO_ROOT / source).is_dir():
                    shutil.copytree(REPO_ROOT / source, to, ignore=ignore)
                elif source.endswith(".yaml"):  # deploy/dagster.yaml, deploy/workspace.yaml
                    to.write_text(yaml.safe_dump(on_this_machine(yaml.safe_load((REPO_ROOT / source).read_text()), service, self.place)))
                else:
                    shutil.copyfile(REPO_ROOT / source, to)
        self._image = self._image_listing()  # before any service runs
        target_arg = next(arg.split("=", 1)[1] for op, arg in dockerfile() if op == "ARG" and arg.startswith("DBT_TARGET="))
        env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(self.root / "tmp"), "DBT_TARGET": target_arg}
        with (self.root / "logs" / "image-dbt-parse.log").open("wb") as out:
            return subprocess.Popen([str(VENV_BIN / "dbt"), "parse", "--profiles-dir", "."], cwd=workdir / "ch_dbt", env=env,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    def _image_listing(self) -> dict[str, int]:
        base, listing = self.root / "image", {}
        for path in base.rglob("*"):
            try:
                listing[str(path.relative_to(base))] = path.stat().st_mtime_ns if path.is_file() else 0
            except FileNotFoundError:  # removed meanwhile
                pass
        return listing

    def image_changes(self) -> set[str]:
        """What the services created or changed in the image's file system since it was built: in the
        image all of it is root's and read-only for the runtime user, so each is a write that fails there."""
        return {path for path, mtime in self._image_listing().items() if self._image.get(path) != mtime}

    def _start_when_ready(self, name: str, log, parse: subprocess.Popen) -> None:
        service = self.compose["services"][name]
        for dep, condition in (service.get("depends_on") or {}).items():
            self._wait_for(dep, condition["condition"] if isinstance(condition, dict) else "service_started")
        if name == "ch-pipeline-code":
            if parse.wait(timeout=300) != 0:
                raise RuntimeError(f"the image's dbt parse failed: see {self.root / 'logs' / 'image-dbt-parse.log'}")
            dbt_project = f"{self.workdir(service).relative_to(self.root / 'image')}/ch_dbt/"
            self._image.update({p: m for p, m in self._image_listing().items() if p.startswith(dbt_project)})  # the build's
        argv = self.command(service["command"], service)
        grace = float(str(service.get("stop_grace_period", f"{DEFAULT_GRACE}s")).rstrip("s"))
        log(f"{name}: {shlex.join(service['command'])}")
        self.services[name] = Service(name, argv, self.env_of(name), self.workdir(service), self.root / "logs" / f"{name}.log", grace).start()

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
        stop_services(list(reversed(self.services.values())))
        if self.replay is not None:
            self.replay.stop()
        if self.broker is not None:
            self.broker.stop()
        if self.own_postgres and self.postgres is not None:
            self.postgres.stop()


@click.command("prod-local")
@click.option("--port", default=3000, show_default=True, help="Dagster webserver port (127.0.0.1).")
@click.option("--events", default=20_000, show_default=True, help="Events in the replay server's history.")
@click.option("--rate", default=20.0, show_default=True, help="Events per second streamed by the replay server.")
@click.option("--sensor-interval", default=None, type=int, help="CH_SENSOR_INTERVAL_SECONDS for the code server (default: production's).")
def prod_local_command(port: int, events: int, rate: float, sensor_interval: int | None) -> None:
    """Run docker-compose.yml's services as local processes, on a throwaway Postgres. Ctrl-C stops all.

    Self-contained: the local broker stands in for Kafka, the replay server for the Companies House
    stream, DuckDB for BigQuery. Everything lives in a temporary directory, removed at the end.
    """
    from ch_pipeline.local_stack import stop_on_signals

    if port and port_is_taken(port):
        raise click.ClickException(f"port {port} is already in use: stop what holds it or pass --port")
    root = Path(tempfile.mkdtemp(prefix="ch-prod-local-"))
    stack = ProductionStack(root, events=events, rate=rate, sensor_interval=sensor_interval, web_port=port)
    failed = True
    with stop_on_signals() as state:
        try:
            try:
                stack.start(log=click.echo)
            except RuntimeError as exc:
                raise click.ClickException(str(exc)) from exc
            click.echo(f"Dagster UI: {stack.web_url}  (logs: {root / 'logs'}; env files: {root / 'deploy'})")
            click.echo("Ctrl-C stops everything.")
            while not state["stopping"]:
                exited = [(n, s.returncode) for n, s in stack.services.items() if n not in ("dagster-migrate", "kafka-topic") and s.returncode is not None]
                if exited:
                    raise click.ClickException(f"{exited[0][0]} exited with code {exited[0][1]}; see {root / 'logs'}")
                time.sleep(0.5)
            failed = False
        finally:
            click.echo("stopping ...")
            stack.stop()
            if failed:
                click.echo(f"logs kept in {root / 'logs'}")
            else:
                shutil.rmtree(root, ignore_errors=True)
            click.echo("stopped.")
