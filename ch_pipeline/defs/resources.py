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
from typing import TYPE_CHECKING, Any, ClassVar, Dict, Optional

import dagster as dg
from pydantic import field_validator

from ch_pipeline.companies_house.streams import COMPANIES, stream
from ch_pipeline.settings import (
    DEFAULT_DATA_DIR,
    DEFAULT_TOPIC,
    Settings,
    kafka_client_config,
    validate_bigquery_dataset,
    validate_gcp_project,
)
from ch_pipeline.warehouse import check_warehouse_name, implementation

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


class DeployedResource(dg.ConfigurableResource):
    """A resource whose deployed instance is built from ``Settings`` (``settings_fields``) and fixed."""

    DEPLOYED: ClassVar[str] = ""  # the description Dagster shows for the deployed resource

    @classmethod
    def settings_fields(cls, settings: Settings) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_env(cls, settings: Settings | None = None) -> dg.ResourceDefinition:
        """The deployed resource: ``settings`` (default: the environment's), not configurable at launch."""
        return fixed_resource(cls(**cls.settings_fields(settings or Settings.from_env())), cls.DEPLOYED)


class KafkaResource(DeployedResource):
    """Where the topic lives: the local broker by default, Confluent Cloud via a config file or SASL env."""

    DEPLOYED: ClassVar[str] = (
        "The Kafka topics: KAFKA_TOPIC (companies) and KAFKA_TOPIC_<STREAM> on KAFKA_BOOTSTRAP_SERVERS or KAFKA_CONFIG_FILE, KAFKA_SECURITY_PROTOCOL, "
        "KAFKA_SASL_* of the code server. Not configurable at launch."
    )

    bootstrap_servers: Optional[str] = None
    config_file: Optional[str] = None
    topic: str = DEFAULT_TOPIC  # the companies stream's
    # Every other stream's topic by stream name (KAFKA_TOPIC_<STREAM>); a stream not named here is
    # in its catalogue topic (``StreamSpec.default_topic``).
    stream_topics: Dict[str, str] = {}
    security_protocol: Optional[str] = None
    sasl_mechanism: Optional[str] = None
    sasl_username: Optional[str] = None
    sasl_password: Optional[str] = None

    def topic_of(self, stream_name: str) -> str:
        """The Kafka topic of stream ``stream_name`` (``ch_pipeline.companies_house.streams``)."""
        if stream_name == COMPANIES:
            return self.topic
        return self.stream_topics.get(stream_name) or stream(stream_name).default_topic

    def client_config(self) -> dict[str, str]:
        """The librdkafka config (SASL credentials only with SASL_SSL: ``settings.kafka_client_config``)."""
        return kafka_client_config(
            self.bootstrap_servers, self.config_file, self.security_protocol, self.sasl_mechanism,
            self.sasl_username, self.sasl_password,
        )  # fmt: skip

    @classmethod
    def settings_fields(cls, settings: Settings) -> dict[str, Any]:
        return {
            "bootstrap_servers": settings.kafka_bootstrap_servers,
            "config_file": str(settings.kafka_config_file) if settings.kafka_config_file else None,
            "topic": settings.kafka_topic,
            "stream_topics": {name: other.topic for name, other in settings.streams.items()},
            "security_protocol": settings.kafka_security_protocol,
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_username": settings.kafka_sasl_username,
            "sasl_password": settings.kafka_sasl_password,
        }


class WarehouseResource(DeployedResource):
    """The warehouse: DuckDB (local default) or BigQuery (production), chosen by ``CH_WAREHOUSE``.

    ``kind`` names the implementation (``ch_pipeline.warehouse.IMPLEMENTATIONS``); ``warehouse()``
    builds it from these fields, so asset bodies call the ``Warehouse`` interface and never branch
    on the kind. ``bulk_csv`` and ``data_dir`` say where the bulk snapshot comes from when a run
    names none. Sensors run in the long-lived code server and must never open the DuckDB file (one
    writer process, and a reader blocks writers: docs/architecture.md §11); only asset bodies call
    ``warehouse()`` or ``duckdb_connection``.
    """

    DEPLOYED: ClassVar[str] = (
        "The warehouse: CH_WAREHOUSE (DuckDB at CH_DUCKDB_PATH, or BigQuery GCP_PROJECT.BIGQUERY_DATASET with "
        "GOOGLE_APPLICATION_CREDENTIALS) of the code server. Not configurable at launch."
    )

    kind: str = "duckdb"
    duckdb_path: str = ".ch-data/warehouse.duckdb"
    gcp_project: Optional[str] = None
    bigquery_dataset: Optional[str] = None
    bigquery_location: Optional[str] = None
    # An offline BigQuery emulator (tests): anonymous credentials against this endpoint.
    bigquery_api_endpoint: Optional[str] = None
    gcp_credentials_path: Optional[str] = None
    # The bulk snapshot when a run names none: CH_BULK_CSV, else a sample generated under data_dir.
    bulk_csv: Optional[str] = None
    data_dir: str = DEFAULT_DATA_DIR

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        return value if isinstance(value, dg.EnvVar) else check_warehouse_name(value)

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
        from ch_pipeline.warehouse.bigquery_warehouse import client_from_config

        return client_from_config(self)

    def warehouse(self) -> "Warehouse":
        """The configured warehouse implementation (``kind``), built from these fields."""
        return implementation(self.kind).from_config(self)

    @classmethod
    def settings_fields(cls, settings: Settings) -> dict[str, Any]:
        return {
            "kind": settings.warehouse,
            "duckdb_path": str(settings.duckdb_path),
            "gcp_project": settings.gcp_project,
            "bigquery_dataset": settings.bigquery_dataset,
            "bigquery_location": settings.bigquery_location,
            "bigquery_api_endpoint": settings.bigquery_api_endpoint,
            "gcp_credentials_path": settings.google_application_credentials,
            "bulk_csv": settings.bulk_csv,
            "data_dir": str(settings.data_dir),
        }
