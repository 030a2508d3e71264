"""Dagster resources shared by several domains, configured from the environment with ``EnvVar``."""

from __future__ import annotations

from typing import Optional

import dagster as dg

from ch_pipeline.kafka.config import client_config
from ch_pipeline.settings import DEFAULT_BOOTSTRAP, DEFAULT_TOPIC, env_or_default


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
