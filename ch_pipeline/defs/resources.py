"""Dagster resources shared by several domains, built from ``Settings`` and fixed for every run.

Where the pipeline connects, and with which secrets, is not run config. Any ``ConfigurableResource``
given to ``Definitions`` keeps all its fields settable at launch, from the launchpad or GraphQL
(``{resources: {kafka: {config: {bootstrap_servers: ..., sasl_password: {env: ...}}}}}``), even when
built with ``EnvVar``s. So ``from_env()`` gives Dagster a resource definition with an empty config
schema around an instance built from ``Settings``: config for it fails validation before a run
starts, and nothing connects. The classes stay ``ConfigurableResource``s so that assets and sensors
ask for them by type, and tests build them in code with explicit values.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import dagster as dg
from pydantic import field_validator

from ch_pipeline.settings import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_TOPIC,
    Settings,
    kafka_client_config,
    kafka_overrides,
    validate_bigquery_dataset,
    validate_gcp_project,
)

if TYPE_CHECKING:
    import duckdb
    from google.cloud import bigquery

    from ch_pipeline.warehouse.landing import Warehouse


def fixed_resource(resource: dg.ConfigurableResource, description: str) -> dg.ResourceDefinition:
    """``resource`` as a resource definition that run config cannot change.

    Its config schema is empty: ``{resources: {<key>: {config: {...}}}}`` with any field is refused
    ("Received unexpected config entry") when the run is launched, before any resource is built.
    """
    return dg.ResourceDefinition(resource_fn=lambda _: resource, config_schema={}, description=description)


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
        """The librdkafka config (SASL credentials only with SASL_SSL: ``settings.kafka_client_config``)."""
        overrides = kafka_overrides(self.security_protocol, self.sasl_mechanism, self.sasl_username, self.sasl_password)
        bootstrap = self.bootstrap_servers or (None if self.config_file else DEFAULT_BOOTSTRAP)
        return kafka_client_config(bootstrap, self.config_file, overrides)

    @classmethod
    def from_env(cls, settings: Settings | None = None) -> dg.ResourceDefinition:
        """The deployed resource: ``KAFKA_*`` of the environment, not configurable at launch."""
        settings = settings or Settings.from_env()
        resource = cls(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            config_file=str(settings.kafka_config_file) if settings.kafka_config_file else None,
            topic=settings.kafka_topic,
            security_protocol=settings.kafka_security_protocol,
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_username=settings.kafka_sasl_username,
            sasl_password=settings.kafka_sasl_password,
        )
        return fixed_resource(
            resource,
            "The Kafka topic: KAFKA_TOPIC on KAFKA_BOOTSTRAP_SERVERS or KAFKA_CONFIG_FILE, KAFKA_SECURITY_PROTOCOL, "
            "KAFKA_SASL_* of the code server. Not configurable at launch.",
        )


class WarehouseResource(dg.ConfigurableResource):
    """The warehouse: DuckDB (local default) or BigQuery (production), chosen by ``CH_WAREHOUSE``.

    Sensors run in the long-lived code server and must never open the DuckDB file (one writer
    process, and a reader blocks writers: docs/architecture.md §11); only asset bodies call ``duckdb_connection``.
    """

    kind: str = "duckdb"
    duckdb_path: str = ".ch-data/warehouse.duckdb"
    gcp_project: Optional[str] = None
    bigquery_dataset: Optional[str] = None
    bigquery_location: Optional[str] = None
    # An offline BigQuery emulator (tests): anonymous credentials against this endpoint.
    bigquery_api_endpoint: Optional[str] = None
    gcp_credentials_path: Optional[str] = None

    # They are interpolated into backtick-quoted SQL: the checks of Settings apply in code too.
    @field_validator("gcp_project")
    @classmethod
    def _valid_gcp_project(cls, value: Optional[str]) -> Optional[str]:
        return value if not value or isinstance(value, dg.EnvVar) else validate_gcp_project(value)

    @field_validator("bigquery_dataset")
    @classmethod
    def _valid_bigquery_dataset(cls, value: Optional[str]) -> Optional[str]:
        return value if not value or isinstance(value, dg.EnvVar) else validate_bigquery_dataset(value)

    @contextmanager
    def duckdb_connection(self) -> Iterator["duckdb.DuckDBPyConnection"]:
        """A read-write connection to the DuckDB file, closed when the block ends.

        Close promptly: while it is open no other process can write the file (docs/architecture.md §11).
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
    def from_env(cls, settings: Settings | None = None) -> dg.ResourceDefinition:
        """The deployed resource: ``CH_WAREHOUSE`` and its settings, not configurable at launch."""
        settings = settings or Settings.from_env()
        resource = cls(
            kind=settings.warehouse,
            duckdb_path=str(settings.duckdb_path),
            gcp_project=settings.gcp_project,
            bigquery_dataset=settings.bigquery_dataset,
            bigquery_location=settings.bigquery_location,
            bigquery_api_endpoint=settings.bigquery_api_endpoint,
            gcp_credentials_path=settings.google_application_credentials,
        )
        return fixed_resource(
            resource,
            "The warehouse: CH_WAREHOUSE (DuckDB at CH_DUCKDB_PATH, or BigQuery GCP_PROJECT.BIGQUERY_DATASET with "
            "GOOGLE_APPLICATION_CREDENTIALS) of the code server. Not configurable at launch.",
        )
