"""The project skeleton: CLI, settings, Kafka config, the Dagster code location."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ch_pipeline.cli import _COMMANDS, main
from ch_pipeline.kafka.config import client_config, read_config_file
from ch_pipeline.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def test_every_cli_command_has_help():
    runner = CliRunner()
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in _COMMANDS:
        assert name in result.output
        sub = runner.invoke(main, [name, "--help"])
        assert sub.exit_code == 0, f"{name} --help failed: {sub.output}"
        assert "Usage:" in sub.output


def test_settings_local_defaults(monkeypatch, tmp_path):
    for name in ["CH_DATA_DIR", "CH_DUCKDB_PATH", "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_CONFIG_FILE", "CH_WAREHOUSE", "DBT_TARGET", "CH_CHECKPOINT_PATH", "CH_STREAM_URL"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CH_DATA_DIR", str(tmp_path))
    settings = Settings.from_env()
    assert settings.duckdb_path == tmp_path / "warehouse.duckdb"
    assert settings.checkpoint_path == tmp_path / "producer.checkpoint"
    assert settings.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert settings.kafka_topic == "company_house"
    assert settings.warehouse == "duckdb" and settings.dbt_target == "duckdb"
    assert settings.stream_url == "https://stream.companieshouse.gov.uk/companies"


def test_settings_reject_unknown_warehouse(monkeypatch):
    monkeypatch.setenv("CH_WAREHOUSE", "snowflake")
    with pytest.raises(ValueError, match="CH_WAREHOUSE"):
        Settings.from_env()


def test_confluent_cloud_config_file_and_env_overrides(monkeypatch, tmp_path):
    ini = tmp_path / "client.ini"
    ini.write_text(
        "[default]\nbootstrap.servers=pkc-xxxxx.europe-west2.gcp.confluent.cloud:9092\n"
        "security.protocol=SASL_SSL\nsasl.mechanisms=PLAIN\nsasl.username=KEY\nsasl.password=SECRET\n"
        "[consumer]\ngroup.id=python_example_group_1\n"
    )
    assert read_config_file(ini)["sasl.mechanisms"] == "PLAIN"
    config = client_config(None, ini, {"sasl.password": "FROM_ENV"})
    assert config["bootstrap.servers"].startswith("pkc-")
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.password"] == "FROM_ENV"
    assert "group.id" not in config  # only [default] is client config

    monkeypatch.setenv("KAFKA_CONFIG_FILE", str(ini))
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "ENVKEY")
    resolved = Settings.from_env().kafka_client_config()
    assert resolved["bootstrap.servers"].startswith("pkc-") and resolved["sasl.username"] == "ENVKEY"


def test_dagster_definitions_validate_from_repo_root():
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All code locations passed validation" in result.stdout + result.stderr


def test_config_file_with_leading_comment_and_plain_properties(tmp_path):
    commented = tmp_path / "commented.ini"
    commented.write_text("# Confluent Cloud\n[default]\nbootstrap.servers=b:9092\n")
    assert read_config_file(commented) == {"bootstrap.servers": "b:9092"}
    plain = tmp_path / "client.properties"
    plain.write_text("# no sections\nbootstrap.servers=b:9092\nsasl.mechanisms=PLAIN\n")
    assert read_config_file(plain)["sasl.mechanisms"] == "PLAIN"
