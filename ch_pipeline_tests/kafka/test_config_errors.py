"""A malformed KAFKA_CONFIG_FILE is reported by file and line number, never by its content (issue 19).

The file holds SASL credentials, and the error reaches logs and the Dagster UI, which prints the
whole exception chain: no part of that chain may quote a line.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest

from ch_pipeline.kafka.config import client_config, read_config_file

SECRET = "not-real-Pa55w0rd-4F7x"  # a fake that says so, for the repository secret scan


def chain(error: BaseException) -> list[BaseException]:
    """The error and everything linked from it, whether or not Python would print the link."""
    seen: list[BaseException] = []
    pending = [error]
    while pending:
        current = pending.pop()
        if current is not None and all(current is not s for s in seen):
            seen.append(current)
            pending += [current.__cause__, current.__context__]
    return seen


def assert_no_secret(error: BaseException) -> None:
    printed = "".join(traceback.format_exception(error))
    assert SECRET not in printed, printed
    for linked in chain(error):
        assert SECRET not in str(linked) and SECRET not in repr(linked) and SECRET not in repr(linked.args), linked


def config_error(path: Path) -> ValueError:
    with pytest.raises(ValueError) as raised:
        client_config(None, path)
    assert_no_secret(raised.value)
    return raised.value


@pytest.mark.parametrize(
    "text, line",
    [
        # A line without "=" or ":" in a file with a section (librdkafka would read it as nothing).
        (f"[default]\nbootstrap.servers=b:9092\nsasl.password {SECRET}\n", 3),
        # The same in a plain properties file: the line number is the file's, not the parser's.
        (f"bootstrap.servers=b:9092\nsasl.password {SECRET}\n", 2),
        # A property before the first section header.
        (f"sasl.password={SECRET}\n[default]\nbootstrap.servers=b:9092\n", 1),
    ],
)
def test_a_malformed_line_is_named_by_file_and_number_only(tmp_path, text, line):
    path = tmp_path / "kafka.ini"
    path.write_text(text)
    message = str(config_error(path))
    assert str(path) in message and f"line {line}" in message, message


def test_every_malformed_line_is_listed(tmp_path):
    path = tmp_path / "kafka.ini"
    path.write_text(f"[default]\nsasl.username KEY\nbootstrap.servers=b:9092\nsasl.password {SECRET}\n")
    assert "lines 2, 4" in str(config_error(path))


def test_a_repeated_property_is_named_by_line_too(tmp_path):
    path = tmp_path / "kafka.ini"
    path.write_text(f"[default]\nsasl.password=old\nsasl.password={SECRET}\n")
    message = str(config_error(path))
    assert str(path) in message and "line 3" in message, message


def test_a_repeated_section_is_named_by_line_too(tmp_path):
    path = tmp_path / "kafka.ini"
    path.write_text(f"[default]\nsasl.password={SECRET}\n[default]\nbootstrap.servers=b:9092\n")
    message = str(config_error(path))
    assert str(path) in message and "line 3" in message, message


def test_a_well_formed_file_still_reads(tmp_path):
    path = tmp_path / "kafka.ini"
    path.write_text(f"# comment\nbootstrap.servers=b:9092\nsasl.password={SECRET}\n")
    assert read_config_file(path) == {"bootstrap.servers": "b:9092", "sasl.password": SECRET}
