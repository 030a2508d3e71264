"""The local stack cannot be pointed elsewhere by a stray `.env` or by production variables in the shell."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ch_pipeline.local_stack import REPO_ROOT, ChildProcesses, LocalStack, prepare_dagster_home
from ch_pipeline.settings import Settings

DAGSTER = str(Path(sys.executable).parent / "dagster")


def test_the_dagster_cli_loads_the_env_file_of_its_working_directory(tmp_path: Path):
    """The attack: a `.env` beside where Dagster starts changes what the code location sees."""
    (tmp_path / ".env").write_text("CH_WAREHOUSE=not-a-warehouse\n")
    env = {**os.environ, "DAGSTER_HOME": str(prepare_dagster_home(tmp_path / "data"))}
    env.pop("CH_WAREHOUSE", None)
    command = [DAGSTER, "definitions", "validate", "-w", str(REPO_ROOT / "workspace.yaml")]
    poisoned = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert poisoned.returncode != 0 and "not-a-warehouse" in poisoned.stdout + poisoned.stderr


def test_children_start_in_dagster_home_never_where_a_env_file_may_lie(tmp_path: Path):
    home = prepare_dagster_home(tmp_path)
    children = ChildProcesses()
    child = children.start("probe", [sys.executable, "-c", "import os; print(os.getcwd())"],
                           {**os.environ, "DAGSTER_HOME": str(home)}, tmp_path / "probe.log")  # fmt: skip
    child.wait(30)
    assert Path((tmp_path / "probe.log").read_text().strip()) == home
    assert not (home / ".env").exists()


def test_production_credentials_in_the_shell_never_reach_the_local_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name, value in {
        "KAFKA_CONFIG_FILE": "/run/secrets/ch-pipeline/kafka.ini", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_USERNAME": "key", "KAFKA_SASL_PASSWORD": "secret", "CH_STREAM_API_KEY": "stream-key",
        "GOOGLE_APPLICATION_CREDENTIALS": "/run/secrets/gcp.json", "GCP_PROJECT": "prod-project", "BIGQUERY_DATASET": "prod",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CH_DATA_DIR", str(tmp_path))

    class Running:
        bootstrap_servers, url = "127.0.0.1:1", "http://127.0.0.1:2/companies"

    stack = LocalStack(Settings.from_env(), events=1, rate=None)
    stack.broker, stack.replay = Running(), Running()
    env = stack.env()
    for name in ("KAFKA_CONFIG_FILE", "KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD",
                 "CH_STREAM_API_KEY", "GOOGLE_APPLICATION_CREDENTIALS", "GCP_PROJECT", "BIGQUERY_DATASET"):  # fmt: skip
        assert name not in env
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:1" and env["CH_WAREHOUSE"] == "duckdb"


def test_the_local_stack_keeps_two_days_of_runs_unless_told_otherwise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A laptop's instance stays small (docs/architecture.md §14); a value in the shell wins."""
    monkeypatch.setenv("CH_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CH_HISTORY_RETENTION_DAYS", raising=False)

    class Running:
        bootstrap_servers, url = "127.0.0.1:1", "http://127.0.0.1:2/companies"

    stack = LocalStack(Settings.from_env(), events=1, rate=None)
    stack.broker, stack.replay = Running(), Running()
    assert stack.env()["CH_HISTORY_RETENTION_DAYS"] == "2"
    monkeypatch.setenv("CH_HISTORY_RETENTION_DAYS", "30")
    assert stack.env()["CH_HISTORY_RETENTION_DAYS"] == "30"
