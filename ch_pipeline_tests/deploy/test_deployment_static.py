"""Static checks of the production stack, for a machine without a Docker engine.

What can be proven without running containers: the compose file parses and every reference in it
resolves (image or build, commands and their options, env files, mounts, dependencies), the
Dagster instance config is valid for Dagster itself, the workspace points at the code server,
the Dockerfile is non-root and ships the dbt manifest (its dbt step is run here), and secrets stay
out of git and out of the build context.
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
from importlib.metadata import entry_points
from pathlib import Path

import click
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DEPLOY = REPO / "deploy"
OUR_IMAGE = "ch-pipeline:latest"
CODE_SERVICE = "ch-pipeline-code"


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
    assert referenced == {"deploy/postgres.env", "deploy/prod.env"}
    for path in referenced:
        assert git_ignored(path), f"{path} will hold credentials: it must be git-ignored"
        assert tracked(f"{path}.example"), f"{path}.example (the template users copy) must be committed"


def test_env_templates_hold_no_values_for_credentials():
    secret_names = re.compile(r"PASSWORD|SECRET|API_KEY|TOKEN")
    for template in DEPLOY.glob("*.env.example"):
        for key, value in env_file_keys(template).items():
            if secret_names.search(key):
                assert value == "", f"{template.name}: {key} must be empty in the template"


def test_env_template_names_are_the_ones_the_code_reads():
    """Every variable in prod.env.example is part of the contract (.env.example) or read by the dbt profile."""
    contract = env_file_keys(REPO / ".env.example")
    profile = (REPO / "ch_dbt" / "profiles.yml").read_text()
    for key in env_file_keys(DEPLOY / "prod.env.example"):
        assert key in contract or f"env_var('{key}'" in profile, f"prod.env.example: {key} is read by nothing"


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
        for mount in service.get("volumes") or []:
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (REPO / source).is_dir(), f"{name}: bind mount source {source} is missing"
            else:
                assert source in named_volumes, f"{name}: volume {source} is not declared"
    assert services["producer"]["restart"] in ("always", "unless-stopped", "on-failure")
    assert any(m.endswith(":/var/lib/ch-pipeline") for m in services["producer"]["volumes"]), "the checkpoint needs a volume"


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


def test_dockerfile_installs_the_project_and_parses_dbt_at_build_time():
    runs = " ".join(arg for op, arg in dockerfile_instructions() if op == "RUN")
    assert "pip install" in runs and re.search(r"pip install (-e )?\.", runs)
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
