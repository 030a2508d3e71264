"""librdkafka client configuration shared by the producer, the sensor and the landing runs."""

from __future__ import annotations

import configparser
import re
from collections.abc import Mapping
from pathlib import Path


def read_config_file(path: str | Path) -> dict[str, str]:
    """Read a librdkafka properties file in Confluent's ``getting_started.ini`` shape.

    The ``[default]`` section holds client properties; a file without sections (plain
    ``client.properties``) is read as if it were all ``[default]``.
    """
    text = Path(path).read_text()
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # librdkafka keys are case-sensitive
    if not re.search(r"^\s*\[", text, re.MULTILINE):
        text = "[default]\n" + text
    parser.read_string(text)
    if not parser.has_section("default"):
        raise ValueError(f"{path}: no [default] section with librdkafka properties")
    return dict(parser.items("default"))


def client_config(
    bootstrap_servers: str | None,
    config_file: str | Path | None = None,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Base librdkafka config: the file (if any), then overrides (SASL from env), then bootstrap."""
    config: dict[str, str] = {}
    if config_file:
        config.update(read_config_file(config_file))
    config.update(overrides or {})
    if bootstrap_servers:
        config["bootstrap.servers"] = bootstrap_servers
    if "bootstrap.servers" not in config:
        raise ValueError("no Kafka bootstrap servers: set KAFKA_BOOTSTRAP_SERVERS or KAFKA_CONFIG_FILE")
    return config
