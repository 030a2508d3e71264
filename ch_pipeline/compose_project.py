"""``docker-compose.yml`` and the ``Dockerfile``, read, and what a container would see mapped onto this machine.

``ch_pipeline.production_stack`` runs the compose file's services as local processes; ``on_this_machine``
is the one place that turns what a container would see (service names, container ports, container
paths) into what a process here needs.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import click
import yaml

from ch_pipeline.companies_house.bulk_csv import SAMPLE_FILE_DATE, published_name

REPO_ROOT = Path(__file__).resolve().parents[1]


def self_contained_values(password: str, sensor_interval: int | None, streams_sensor_interval: int | None = None) -> dict[str, dict[str, str]]:
    """What goes into each ``deploy/<name>.env`` (over its ``.example``): README "Self-contained".

    Container names and paths, as an operator writes them; ``on_this_machine`` maps them.
    """
    pipeline = {"CH_WAREHOUSE": "duckdb", "DBT_TARGET": "duckdb", "CH_BULK_CSV": f"/var/lib/ch-pipeline/{published_name(SAMPLE_FILE_DATE, '.csv')}"}
    # Both read by the code server (its sensors).
    if sensor_interval:
        pipeline["CH_SENSOR_INTERVAL_SECONDS"] = str(sensor_interval)
    if streams_sensor_interval:
        pipeline["CH_STREAMS_SENSOR_INTERVAL_SECONDS"] = str(streams_sensor_interval)
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


def producer_services(compose: dict) -> dict[str, str]:
    """{service: the stream it follows} for every service whose command is ``ch-pipeline produce``: the
    compose file alone says which producers production runs (``--stream``, else produce's default)."""
    from ch_pipeline.kafka.producer import produce_command

    default = next(p.default for p in produce_command.params if p.name == "stream_name")
    found = {}
    for name, service in compose["services"].items():
        argv = service.get("command") or []
        if argv[:2] == ["ch-pipeline", "produce"]:
            found[name] = argv[argv.index("--stream") + 1] if "--stream" in argv else default
    return found


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
