"""The code location loads with production settings, offline, as it will inside the image.

`dagster definitions validate` runs against a copy of the tree laid out like the image
(ch_pipeline/ beside ch_dbt/ with the manifest from the Dockerfile's `dbt parse`), with the
production variables set (BigQuery, Confluent Cloud SASL via KAFKA_CONFIG_FILE) and a guard that
records any network connection or DNS lookup made by Python while the definitions load.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest

from ch_pipeline.defs.resources import KafkaResource
from ch_pipeline.settings import Settings

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# Placeholders of deploy/kafka.ini.example -> made-up, obviously fake values.
FAKE_CONFLUENT = {
    "<BOOTSTRAP SERVER, e.g. pkc-xxxxx.europe-west2.gcp.confluent.cloud:9092>": "pkc-test0.europe-west2.gcp.confluent.cloud:9092",
    "<CLUSTER API KEY>": "TESTKEY0000000000",
    "<CLUSTER API SECRET>": "test-secret-not-real",
}

# Python-level network guard, loaded by every Python process of the check (sitecustomize).
NETWORK_GUARD = textwrap.dedent(
    """
    import os, socket

    _LOG = os.environ["NETWORK_GUARD_LOG"]
    _LOCAL = {None, "", "localhost", "127.0.0.1", "::1", "0.0.0.0"}
    _connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def _deny(what):
        with open(_LOG, "a") as log:
            log.write(f"{os.getpid()} {what}\\n")
        raise OSError(f"network access while loading definitions: {what}")

    def _is_local(address):
        return isinstance(address, (str, bytes)) or address[0] in _LOCAL

    def connect(self, address):
        return _connect(self, address) if _is_local(address) else _deny(f"connect {address}")

    def connect_ex(self, address):
        return _connect_ex(self, address) if _is_local(address) else _deny(f"connect {address}")

    def getaddrinfo(host, *args, **kwargs):
        return _getaddrinfo(host, *args, **kwargs) if host in _LOCAL else _deny(f"dns {host}")

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
    """
)


def confluent_ini(directory: Path) -> Path:
    text = (REPO / "deploy" / "kafka.ini.example").read_text()
    for placeholder, value in FAKE_CONFLUENT.items():
        text = text.replace(placeholder, value)
    path = directory / "kafka.ini"
    path.write_text(text)
    return path


def production_env(tmp_path: Path) -> dict[str, str]:
    return {
        "CH_WAREHOUSE": "bigquery",
        "DBT_TARGET": "bigquery",
        "GCP_PROJECT": "ch-pipeline-prod-test",
        "BIGQUERY_DATASET": "company_house",
        "BIGQUERY_LOCATION": "EU",
        # Loading must not read the key: a path that does not exist proves it.
        "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "secrets" / "gcp-service-account.json"),
        "KAFKA_CONFIG_FILE": str(confluent_ini(tmp_path)),
        "KAFKA_TOPIC": "company_house",
        "CH_STREAM_URL": "https://stream.companieshouse.gov.uk/companies",
        "CH_STREAM_API_KEY": "test-stream-key-not-real",
        "CH_DATA_DIR": str(tmp_path / "data"),
    }


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pyproject.toml, ch_pipeline/ and ch_dbt/ as the Dockerfile lays them out, manifest parsed for
    bigquery. pyproject.toml declares the project whose defs/ folder definitions.py loads."""
    root = tmp_path_factory.mktemp("image")
    ignore = shutil.ignore_patterns("__pycache__", "target", "logs", "dbt_packages")
    shutil.copyfile(REPO / "pyproject.toml", root / "pyproject.toml")
    shutil.copytree(REPO / "ch_pipeline", root / "ch_pipeline", ignore=ignore)
    shutil.copytree(REPO / "ch_dbt", root / "ch_dbt", ignore=ignore)
    env = {"PATH": os.environ["PATH"], "HOME": str(root), "DBT_TARGET": "bigquery"}
    parse = subprocess.run([str(BIN / "dbt"), "parse", "--profiles-dir", "."], cwd=root / "ch_dbt", env=env, capture_output=True, text=True)
    assert parse.returncode == 0, parse.stdout[-3000:]
    return root


@pytest.fixture
def guarded_production_env(image_tree: Path, tmp_path: Path) -> tuple[dict[str, str], Path]:
    """Environment of a process in the image: production variables, the network guard, an instance."""
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NETWORK_GUARD)
    network_log = tmp_path / "network.log"
    network_log.touch()
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        # The image tree first (as in the image), then the guard.
        "PYTHONPATH": os.pathsep.join([str(image_tree), str(guard)]),
        "NETWORK_GUARD_LOG": str(network_log),
        "DAGSTER_HOME": str(dagster_home),
        **production_env(tmp_path),
    }
    return env, network_log


def test_definitions_validate_with_production_env_and_no_network(image_tree: Path, guarded_production_env):
    env, network_log = guarded_production_env
    where = subprocess.run([sys.executable, "-c", "import ch_pipeline; print(ch_pipeline.__file__)"], cwd=image_tree, env=env, capture_output=True, text=True)
    assert where.stdout.startswith(str(image_tree)), f"the check must load the image-shaped copy: {where.stdout}{where.stderr}"
    result = subprocess.run(
        [str(BIN / "dagster"), "definitions", "validate", "-m", "ch_pipeline.definitions"],
        cwd=image_tree, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "All code locations passed validation" in output, output[-2000:]
    assert network_log.read_text() == "", f"definitions touched the network while loading:\n{network_log.read_text()}"


PRODUCTION_SHAPE = """
import json
import dagster as dg
from ch_pipeline.definitions import defs

with dg.build_resources({name: defs.resources[name] for name in ("warehouse", "kafka", "dbt")}) as resources:
    print(json.dumps({
        "sensors": {s.name: s.default_status.value for s in defs.sensors},
        "warehouse": [resources.warehouse.kind, resources.warehouse.gcp_project, resources.warehouse.bigquery_dataset],
        "kafka_config_file": resources.kafka.config_file,
        "dbt_target": resources.dbt.target,
    }))
"""


def test_production_env_selects_bigquery_confluent_and_running_sensors(image_tree: Path, guarded_production_env):
    """What the daemon gets: sensors RUNNING without a click in the UI, BigQuery, the Kafka file, dbt's bigquery target."""
    env, network_log = guarded_production_env
    result = subprocess.run([sys.executable, "-c", PRODUCTION_SHAPE], cwd=image_tree, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    shape = json.loads(result.stdout.strip().splitlines()[-1])
    assert shape["sensors"] and set(shape["sensors"].values()) == {"RUNNING"}, shape["sensors"]
    assert shape["warehouse"] == ["bigquery", "ch-pipeline-prod-test", "company_house"]
    assert shape["kafka_config_file"] == env["KAFKA_CONFIG_FILE"]
    assert shape["dbt_target"] == "bigquery"
    assert network_log.read_text() == ""


def test_the_guard_catches_a_connection(tmp_path: Path):
    """The network guard is real: a lookup of a public name is recorded and refused."""
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NETWORK_GUARD)
    log = tmp_path / "network.log"
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(guard), "NETWORK_GUARD_LOG": str(log)}
    script = "import socket\ntry:\n    socket.getaddrinfo('bigquery.googleapis.com', 443)\nexcept OSError as e:\n    print(e)"
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert "network access while loading definitions" in result.stdout
    assert "dns bigquery.googleapis.com" in log.read_text()


@pytest.mark.parametrize("source", ["config_file", "environment"])
def test_confluent_sasl_reaches_producer_sensor_and_runs_alike(monkeypatch, tmp_path: Path, source: str):
    """The producer (Settings) and the sensor/runs (KafkaResource) build the same SASL_SSL client config."""
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_CONFIG_FILE", "KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM",
                 "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    if source == "config_file":
        monkeypatch.setenv("KAFKA_CONFIG_FILE", str(confluent_ini(tmp_path)))
    else:
        monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", FAKE_CONFLUENT[next(iter(FAKE_CONFLUENT))])
        monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
        monkeypatch.setenv("KAFKA_SASL_MECHANISM", "PLAIN")
        monkeypatch.setenv("KAFKA_SASL_USERNAME", FAKE_CONFLUENT["<CLUSTER API KEY>"])
        monkeypatch.setenv("KAFKA_SASL_PASSWORD", FAKE_CONFLUENT["<CLUSTER API SECRET>"])

    producer_config = Settings.from_env().kafka_client_config()
    with dg.build_resources({"kafka": KafkaResource.from_env()}) as resources:
        dagster_config = resources.kafka.client_config()

    assert producer_config == dagster_config
    assert dagster_config == {
        "bootstrap.servers": "pkc-test0.europe-west2.gcp.confluent.cloud:9092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "PLAIN",
        "sasl.username": "TESTKEY0000000000",
        "sasl.password": "test-secret-not-real",
    }
