"""Dagster resources shared by several domains, configured from the environment with ``EnvVar``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import dagster as dg

from ch_pipeline.kafka.config import client_config
from ch_pipeline.settings import DEFAULT_BOOTSTRAP, DEFAULT_TOPIC, env_or_default

if TYPE_CHECKING:
    import duckdb
    from google.cloud import bigquery

    from ch_pipeline.warehouse.landing import Warehouse


class KafkaResource(dg.ConfigurableResource):
    """Where the topic lives: the local broker by default, Confluent Cloud via a config file or SASL env."""

    bootstrap_servers: Optional[str] = None
    config_file: Optional[str] = None
    topic: str = DEFAULT_TOPIC
    security_protocol: Optional[str] = None
    sasl_mechanism: Optional[str] = None
    sasl_username: Optional[str] = None
    sasl_password: Optional[str] = None

    def client_config(self) -> dict[str, str]:
        overrides = {
            "security.protocol": self.security_protocol,
            "sasl.mechanisms": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password,
        }
        bootstrap = self.bootstrap_servers or (None if self.config_file else DEFAULT_BOOTSTRAP)
        return client_config(bootstrap, self.config_file, {k: v for k, v in overrides.items() if v})

    @classmethod
    def from_env(cls) -> "KafkaResource":
        return cls(
            bootstrap_servers=env_or_default("KAFKA_BOOTSTRAP_SERVERS", None),
            config_file=env_or_default("KAFKA_CONFIG_FILE", None),
            topic=env_or_default("KAFKA_TOPIC", DEFAULT_TOPIC),
            security_protocol=env_or_default("KAFKA_SECURITY_PROTOCOL", None),
            sasl_mechanism=env_or_default("KAFKA_SASL_MECHANISM", None),
            sasl_username=env_or_default("KAFKA_SASL_USERNAME", None),
            sasl_password=env_or_default("KAFKA_SASL_PASSWORD", None),
        )


class WarehouseResource(dg.ConfigurableResource):
    """The warehouse: DuckDB (local default) or BigQuery (production), chosen by ``CH_WAREHOUSE``.

    Sensors run in the long-lived code server and must never open the DuckDB file (one writer
    process, and a reader blocks writers: DESIGN §11); only asset bodies call ``duckdb_connection``.
    """

    kind: str = "duckdb"
    duckdb_path: str = ".ch-data/warehouse.duckdb"
    gcp_project: Optional[str] = None
    bigquery_dataset: Optional[str] = None
    bigquery_location: Optional[str] = None
    # An offline BigQuery emulator (tests): anonymous credentials against this endpoint.
    bigquery_api_endpoint: Optional[str] = None
    gcp_credentials_path: Optional[str] = None

    @contextmanager
    def duckdb_connection(self) -> Iterator["duckdb.DuckDBPyConnection"]:
        """A read-write connection to the DuckDB file, closed when the block ends.

        Close promptly: while it is open no other process can write the file (DESIGN §11).
        """
        from ch_pipeline.warehouse.duckdb_warehouse import connect

        with connect(Path(self.duckdb_path)) as con:
            yield con

    def bigquery_client(self) -> "bigquery.Client":
        """A BigQuery client for ``gcp_project``; anonymous against ``bigquery_api_endpoint`` (an emulator)."""
        from ch_pipeline.warehouse.bigquery_warehouse import make_client

        return make_client(self.gcp_project, self.bigquery_location, self.bigquery_api_endpoint, self.gcp_credentials_path)

    def warehouse(self) -> "Warehouse":
        """The configured warehouse implementation (``kind``: duckdb or bigquery)."""
        if self.kind == "duckdb":
            from ch_pipeline.warehouse.duckdb_warehouse import DuckDBWarehouse

            return DuckDBWarehouse(Path(self.duckdb_path))
        if self.kind == "bigquery":
            from ch_pipeline.warehouse.bigquery_warehouse import BigQueryWarehouse

            if not (self.gcp_project and self.bigquery_dataset):
                raise ValueError("CH_WAREHOUSE=bigquery needs GCP_PROJECT and BIGQUERY_DATASET: set both")
            return BigQueryWarehouse(self.bigquery_client(), self.gcp_project, self.bigquery_dataset, self.bigquery_location)
        raise ValueError(f"CH_WAREHOUSE must be 'duckdb' or 'bigquery', got {self.kind!r}")

    @classmethod
    def from_env(cls) -> "WarehouseResource":
        from ch_pipeline.settings import Settings

        settings = Settings.from_env()
        return cls(
            kind=env_or_default("CH_WAREHOUSE", "duckdb"),
            duckdb_path=env_or_default("CH_DUCKDB_PATH", str(settings.duckdb_path)),
            gcp_project=env_or_default("GCP_PROJECT", None),
            bigquery_dataset=env_or_default("BIGQUERY_DATASET", None),
            bigquery_location=env_or_default("BIGQUERY_LOCATION", None),
            bigquery_api_endpoint=env_or_default("BIGQUERY_API_ENDPOINT", None),
            gcp_credentials_path=env_or_default("GOOGLE_APPLICATION_CREDENTIALS", None),
        )
