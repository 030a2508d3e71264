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
    added_lines = 0
    if not re.search(r"^\s*\[", text, re.MULTILINE):
        text, added_lines = "[default]\n" + text, 1
    parser = _parse(path, text, added_lines)
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


def _parse(path: str | Path, text: str, added_lines: int) -> configparser.ConfigParser:
    """Parse ``text``; on a syntax error, name the file and line numbers but never the lines.

    configparser's own errors quote the offending line, and in this file that is often
    ``sasl.password=...``: its message would reach the logs and the Dagster UI.
    """
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # librdkafka keys are case-sensitive
    try:
        parser.read_string(text)
        return parser
    except configparser.Error as exc:
        problem = _describe(exc, added_lines)
    # Raised outside the except block: inside it, Python would chain configparser's error as
    # __context__ (even with "from None", which only hides it), and Dagster shows the chain.
    raise ValueError(f"{path}: {problem}; fix the file (its content is not shown here: it may hold credentials)")


def _describe(error: configparser.Error, added_lines: int) -> str:
    """What is wrong and where, from the error's attributes only (never its message)."""
    if isinstance(error, configparser.MissingSectionHeaderError):  # a ParsingError without .errors
        return f"line {error.lineno - added_lines} is before the first [section] header"
    if isinstance(error, configparser.ParsingError):
        numbers = ", ".join(str(lineno - added_lines) for lineno, _line in error.errors)
        lines = f"lines {numbers} are" if len(error.errors) > 1 else f"line {numbers} is"
        return f"{lines} neither `key = value` nor a [section] header"
    if isinstance(error, configparser.DuplicateOptionError):
        return f"line {error.lineno - added_lines} sets a property already set in its section"
    if isinstance(error, configparser.DuplicateSectionError):
        return f"line {error.lineno - added_lines} repeats a [section] header"
    return f"cannot be parsed ({type(error).__name__})"  # no other error is raised by read_string
