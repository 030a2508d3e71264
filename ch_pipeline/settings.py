"""Environment -> typed settings: the only module that reads ``os.environ``.

Every name here is part of the CLI/env contract (docs/architecture.md §10, `.env.example`). Defaults are the
embedded local stack: local broker, local replay server, DuckDB under ``CH_DATA_DIR``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from ch_pipeline.companies_house.streams import COMPANIES, STREAMS
from ch_pipeline.warehouse import check_warehouse_name

OFFICIAL_STREAM_URL = "https://stream.companieshouse.gov.uk/companies"
DEFAULT_TOPIC = "company_house"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_DATA_DIR = ".ch-data"


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or default


@dataclass(frozen=True)
class StreamSettings:
    """Where one Companies House stream comes from and goes: its URL, Kafka topic and checkpoint file.

    Companies keeps its names (``CH_STREAM_URL``, ``KAFKA_TOPIC``, ``CH_CHECKPOINT_PATH``); another stream
    reads them with its suffix (``CH_STREAM_URL_OFFICERS``, ``KAFKA_TOPIC_OFFICERS``,
    ``CH_CHECKPOINT_PATH_OFFICERS``), else its path on the companies URL's host, its catalogue topic
    and ``producer-<stream>.checkpoint`` in ``CH_DATA_DIR`` (each stream its own resume point).
    """

    name: str
    url: str
    topic: str
    checkpoint_path: Path
    topic_env: str  # the variable that names the topic, for error messages


@dataclass(frozen=True)
class Settings:
    """A snapshot of the environment, with the local defaults filled in."""

    stream_url: str
    stream_api_key: str | None = field(repr=False)
    data_dir: Path
    checkpoint_path: Path
    kafka_bootstrap_servers: str | None
    kafka_config_file: Path | None
    kafka_topic: str
    warehouse: str  # a name of ch_pipeline.warehouse.IMPLEMENTATIONS
    duckdb_path: Path
    gcp_project: str | None
    bigquery_dataset: str | None
    bigquery_location: str | None
    bigquery_api_endpoint: str | None
    google_application_credentials: str | None
    dbt_target: str
    bulk_csv: str | None
    # Managed Kafka without a config file (Confluent Cloud: SASL_SSL + PLAIN with an API key/secret).
    kafka_security_protocol: str | None = None
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = field(default=None, repr=False)
    streams: dict[str, StreamSettings] = field(default_factory=dict)  # every stream but companies

    def stream_settings(self, name: str) -> StreamSettings:
        """The URL, topic and checkpoint of stream ``name`` (``ch_pipeline.companies_house.streams``)."""
        if name == COMPANIES:
            return StreamSettings(name, self.stream_url, self.kafka_topic, self.checkpoint_path, "KAFKA_TOPIC")
        if name not in self.streams:
            raise ValueError(f"unknown Companies House stream {name!r}: one of companies, {', '.join(self.streams)}")
        return self.streams[name]

    def kafka_client_config(self) -> dict[str, str]:
        return kafka_client_config(
            self.kafka_bootstrap_servers, self.kafka_config_file, self.kafka_security_protocol,
            self.kafka_sasl_mechanism, self.kafka_sasl_username, self.kafka_sasl_password,
        )  # fmt: skip

    @classmethod
    def from_env(cls) -> "Settings":
        data_dir = Path(_env("CH_DATA_DIR", DEFAULT_DATA_DIR)).expanduser().resolve()
        warehouse = check_warehouse_name(_env("CH_WAREHOUSE", "duckdb"))
        config_file = _env("KAFKA_CONFIG_FILE")
        gcp_project, bigquery_dataset = _env("GCP_PROJECT"), _env("BIGQUERY_DATASET")
        stream_url = _env("CH_STREAM_URL", OFFICIAL_STREAM_URL)
        return cls(
            stream_url=stream_url,
            stream_api_key=_env("CH_STREAM_API_KEY"),
            data_dir=data_dir,
            checkpoint_path=Path(_env("CH_CHECKPOINT_PATH", str(data_dir / "producer.checkpoint"))),
            kafka_bootstrap_servers=bootstrap_servers(_env("KAFKA_BOOTSTRAP_SERVERS"), config_file),
            kafka_config_file=Path(config_file) if config_file else None,
            kafka_topic=_env("KAFKA_TOPIC", DEFAULT_TOPIC),
            warehouse=warehouse,
            duckdb_path=Path(_env("CH_DUCKDB_PATH", str(data_dir / "warehouse.duckdb"))),
            gcp_project=validate_gcp_project(gcp_project) if gcp_project else None,
            bigquery_dataset=validate_bigquery_dataset(bigquery_dataset) if bigquery_dataset else None,
            bigquery_location=_env("BIGQUERY_LOCATION"),
            bigquery_api_endpoint=_env("BIGQUERY_API_ENDPOINT"),
            google_application_credentials=_env("GOOGLE_APPLICATION_CREDENTIALS"),
            dbt_target=_env("DBT_TARGET", warehouse),
            bulk_csv=_env("CH_BULK_CSV"),
            kafka_security_protocol=_env("KAFKA_SECURITY_PROTOCOL"),
            kafka_sasl_mechanism=_env("KAFKA_SASL_MECHANISM"),
            kafka_sasl_username=_env("KAFKA_SASL_USERNAME"),
            kafka_sasl_password=_env("KAFKA_SASL_PASSWORD"),
            streams=_other_streams(stream_url, data_dir),
        )


def _other_streams(companies_url: str, data_dir: Path) -> dict[str, StreamSettings]:
    # The streams share a host: the companies URL's path, minus /companies, is their base.
    base = companies_url.rstrip("/").removesuffix("/companies")
    return {
        spec.name: StreamSettings(
            spec.name,
            _env(f"CH_STREAM_URL_{spec.env_suffix}", base + spec.path),
            _env(f"KAFKA_TOPIC_{spec.env_suffix}", spec.default_topic),
            Path(_env(f"CH_CHECKPOINT_PATH_{spec.env_suffix}", str(data_dir / f"producer-{spec.name}.checkpoint"))),
            f"KAFKA_TOPIC_{spec.env_suffix}",
        )
        for spec in STREAMS.values()
        if spec.name != COMPANIES
    }


def bootstrap_servers(servers: str | None, config_file: str | Path | None) -> str | None:
    """``servers``, else the local broker; none with a config file (Confluent Cloud names its own)."""
    return servers or (None if config_file else DEFAULT_BOOTSTRAP)


def kafka_client_config(
    bootstrap: str | None,
    config_file: str | Path | None,
    security_protocol: str | None = None,
    sasl_mechanism: str | None = None,
    sasl_username: str | None = None,
    sasl_password: str | None = None,
) -> dict[str, str]:
    """The librdkafka client config of the producer, the sensor and the landing runs alike.

    The one place it is assembled (the file, then ``KAFKA_SECURITY_PROTOCOL``/``KAFKA_SASL_*`` as
    librdkafka properties, then the bootstrap servers), and so the one place that refuses to send
    SASL credentials without TLS: with ``security.protocol`` PLAINTEXT or SASL_PLAINTEXT a SASL/PLAIN
    key and secret cross the network in clear text.
    """
    from ch_pipeline.kafka.config import client_config

    properties = {
        "security.protocol": security_protocol,
        "sasl.mechanisms": sasl_mechanism,
        "sasl.username": sasl_username,
        "sasl.password": sasl_password,
    }
    overrides = {key: value for key, value in properties.items() if value}
    config = client_config(bootstrap_servers(bootstrap, config_file), config_file, overrides)
    protocol = config.get("security.protocol", "PLAINTEXT")
    if (config.get("sasl.username") or config.get("sasl.password")) and protocol.upper() != "SASL_SSL":
        raise ValueError(
            f"Kafka SASL credentials are sent only over TLS: security.protocol is {protocol!r}, must be SASL_SSL "
            "(set it in KAFKA_CONFIG_FILE or KAFKA_SECURITY_PROTOCOL)"
        )
    return config


# BigQuery identifiers are interpolated into backtick-quoted SQL (`project.dataset.table`), so only
# what Google allows gets in. Project IDs: 6-30 lowercase letters, digits and hyphens, starting with
# a letter and not ending with a hyphen (legacy domain-scoped IDs, "example.com:project", are not
# supported). Dataset IDs: letters (ASCII), digits and underscores, at most 1,024 characters.
GCP_PROJECT_ID = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")
BIGQUERY_DATASET_ID = re.compile(r"[A-Za-z0-9_]{1,1024}")


def validate_gcp_project(value: str) -> str:
    """``value`` if it is a valid Google Cloud project ID, else a ``ValueError`` naming GCP_PROJECT."""
    if not GCP_PROJECT_ID.fullmatch(value):
        raise ValueError(
            f"GCP_PROJECT must be a Google Cloud project ID: 6-30 lowercase letters, digits and hyphens, "
            f"starting with a letter and not ending with a hyphen; got {value!r}"
        )
    return value


def validate_bigquery_dataset(value: str) -> str:
    """``value`` if it is a valid BigQuery dataset ID, else a ``ValueError`` naming BIGQUERY_DATASET."""
    if not BIGQUERY_DATASET_ID.fullmatch(value):
        shown = value if len(value) <= 80 else value[:80] + f"... ({len(value)} characters)"
        raise ValueError(
            f"BIGQUERY_DATASET must be a BigQuery dataset ID: only letters, digits and underscores, "
            f"at most 1024 characters; got {shown!r}"
        )
    return value


def sensor_interval_seconds(default: int) -> int:
    """``CH_SENSOR_INTERVAL_SECONDS``: how often the Kafka and automation sensors tick.

    Read when the code location loads (sensor intervals are part of the definitions). The default
    suits production (a run costs ~5 s of a 2-core machine, docs/architecture.md §11); demos and tests shorten it.
    """
    return _positive_whole_number("CH_SENSOR_INTERVAL_SECONDS", default, "seconds")


def streams_sensor_interval_seconds(default: int) -> int:
    """``CH_STREAMS_SENSOR_INTERVAL_SECONDS``: how often the Kafka sensor of each stream other than
    companies ticks. Each tick with new messages is a landing run (~5 s, 2-3 CPU-seconds, serialised
    by the duckdb pool locally), so eight streams polled as often as companies would cost the machine
    more than the companies path itself; their models are kept fresh less eagerly than the core."""
    return _positive_whole_number("CH_STREAMS_SENSOR_INTERVAL_SECONDS", default, "seconds")


def history_retention_days(default: int) -> int:
    """``CH_HISTORY_RETENTION_DAYS``: how many days of runs the Dagster instance keeps (at least 1)."""
    return _positive_whole_number("CH_HISTORY_RETENTION_DAYS", default, "days")


# How long the Companies House streaming API keeps timepoints resumable: "plan for about 3 days"
# (a checkpoint older than that is refused with 416).
DEFAULT_STREAM_RETENTION_HOURS = 72


def stream_retention_hours(default: int = DEFAULT_STREAM_RETENTION_HOURS) -> int:
    """``CH_STREAM_RETENTION_HOURS``: the streaming API's replay window the stream watches measure
    each producer's checkpoint against (``ch_pipeline.defs.watch``). 0: no time-based retention
    (the local replay server counts its retention in timepoints, and its events are dated 2026-01):
    the watches report ages only and never warn."""
    value = _env("CH_STREAM_RETENTION_HOURS")
    if value is None:
        return default
    if not value.isdigit():
        raise ValueError(f"CH_STREAM_RETENTION_HOURS must be a whole number of hours >= 0, got {value!r}")
    return int(value)


def _positive_whole_number(name: str, default: int, unit: str) -> int:
    value = _env(name)
    if value is None:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{name} must be a whole number of {unit} >= 1, got {value!r}")
    return int(value)


def env_or_default(name: str, default: str | None) -> str | dg.EnvVar | None:
    """Dagster resource value: ``EnvVar(name)`` when the variable is set, else the local default.

    ``EnvVar`` keeps the value out of the definitions and shows the variable name in the UI; it
    fails when the variable is unset, so unset variables fall back to the embedded defaults. It
    does not stop run config from replacing the value at launch: connection targets and secrets
    are therefore not passed this way (see ``ch_pipeline.defs.resources``).
    """
    return dg.EnvVar(name) if _env(name) is not None else default


def dbt_build_target_path() -> Path:
    """Where every ``dbt build`` of the Dagster assets writes: one folder, reused.

    dagster-dbt's default is a new folder per run under ``DBT_TARGET_PATH`` (default ``target``,
    relative to the dbt project): ~2 MB each, never removed (GBs a day at one build per tick), and each
    run re-parses the project from scratch because its partial-parse file is in the previous folder.
    The builds never overlap (the warehouse pool), so one folder serves them all.
    """
    return Path(_env("DBT_TARGET_PATH", "target")) / "ch_dbt_models"
