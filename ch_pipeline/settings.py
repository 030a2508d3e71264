"""Environment -> typed settings: the only module that reads ``os.environ``.

Every name here is part of the CLI/env contract (DESIGN §10, `.env.example`). Defaults are the
embedded local stack: local broker, local replay server, DuckDB under ``CH_DATA_DIR``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import dagster as dg

OFFICIAL_STREAM_URL = "https://stream.companieshouse.gov.uk/companies"
LOCAL_REPLAY_URL = "http://127.0.0.1:8765/companies"
DEFAULT_TOPIC = "company_house"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_DATA_DIR = ".ch-data"

Warehouse = Literal["duckdb", "bigquery"]


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or default


@dataclass(frozen=True)
class Settings:
    """A snapshot of the environment, with the local defaults filled in."""

    stream_url: str
    stream_api_key: str | None
    data_dir: Path
    checkpoint_path: Path
    kafka_bootstrap_servers: str | None
    kafka_config_file: Path | None
    kafka_topic: str
    warehouse: Warehouse
    duckdb_path: Path
    gcp_project: str | None
    bigquery_dataset: str | None
    bigquery_location: str | None
    bigquery_api_endpoint: str | None
    google_application_credentials: str | None
    dbt_target: str
    bulk_csv: str | None

    def kafka_client_config(self) -> dict[str, str]:
        from ch_pipeline.kafka.config import client_config

        return client_config(self.kafka_bootstrap_servers, self.kafka_config_file, kafka_overrides())

    @classmethod
    def from_env(cls) -> "Settings":
        data_dir = Path(_env("CH_DATA_DIR", DEFAULT_DATA_DIR)).expanduser().resolve()
        warehouse = _env("CH_WAREHOUSE", "duckdb")
        if warehouse not in ("duckdb", "bigquery"):
            raise ValueError(f"CH_WAREHOUSE must be 'duckdb' or 'bigquery', got {warehouse!r}")
        config_file = _env("KAFKA_CONFIG_FILE")
        return cls(
            stream_url=_env("CH_STREAM_URL", OFFICIAL_STREAM_URL),
            stream_api_key=_env("CH_STREAM_API_KEY"),
            data_dir=data_dir,
            checkpoint_path=Path(_env("CH_CHECKPOINT_PATH", str(data_dir / "producer.checkpoint"))),
            # A config file (Confluent Cloud) names its own bootstrap servers.
            kafka_bootstrap_servers=_env("KAFKA_BOOTSTRAP_SERVERS", None if config_file else DEFAULT_BOOTSTRAP),
            kafka_config_file=Path(config_file) if config_file else None,
            kafka_topic=_env("KAFKA_TOPIC", DEFAULT_TOPIC),
            warehouse=warehouse,  # type: ignore[arg-type]
            duckdb_path=Path(_env("CH_DUCKDB_PATH", str(data_dir / "warehouse.duckdb"))),
            gcp_project=_env("GCP_PROJECT"),
            bigquery_dataset=_env("BIGQUERY_DATASET"),
            bigquery_location=_env("BIGQUERY_LOCATION"),
            bigquery_api_endpoint=_env("BIGQUERY_API_ENDPOINT"),
            google_application_credentials=_env("GOOGLE_APPLICATION_CREDENTIALS"),
            dbt_target=_env("DBT_TARGET", warehouse),
            bulk_csv=_env("CH_BULK_CSV"),
        )


# Managed Kafka (Confluent Cloud: SASL_SSL + PLAIN with an API key/secret) without a config file.
KAFKA_ENV_OVERRIDES = {
    "KAFKA_SECURITY_PROTOCOL": "security.protocol",
    "KAFKA_SASL_MECHANISM": "sasl.mechanisms",
    "KAFKA_SASL_USERNAME": "sasl.username",
    "KAFKA_SASL_PASSWORD": "sasl.password",
}


def kafka_overrides() -> dict[str, str]:
    """librdkafka properties set through ``KAFKA_SECURITY_PROTOCOL``/``KAFKA_SASL_*``."""
    return {key: value for name, key in KAFKA_ENV_OVERRIDES.items() if (value := _env(name))}


def sensor_interval_seconds(default: int) -> int:
    """``CH_SENSOR_INTERVAL_SECONDS``: how often the Kafka and automation sensors tick.

    Read when the code location loads (sensor intervals are part of the definitions). The default
    suits production (a run costs ~5 s of a 2-core machine, DESIGN §11); demos and tests shorten it.
    """
    value = _env("CH_SENSOR_INTERVAL_SECONDS")
    if value is None:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"CH_SENSOR_INTERVAL_SECONDS must be a whole number of seconds >= 1, got {value!r}")
    return int(value)


def env_or_default(name: str, default: str | None) -> str | dg.EnvVar | None:
    """Dagster resource value: ``EnvVar(name)`` when the variable is set, else the local default.

    ``EnvVar`` keeps credentials out of run config and shows the variable name in the UI; it
    fails when the variable is unset, so unset variables fall back to the embedded defaults.
    """
    return dg.EnvVar(name) if _env(name) is not None else default
