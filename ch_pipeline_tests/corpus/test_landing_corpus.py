"""Corpus, landing layer: each Kafka message becomes a stream row with these values, or a reject row
with the reason, through a real run of ``company_house_stream`` (see conftest.py)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from ch_pipeline_tests.corpus.cases import (
    DBT_CASES,
    LANDING_CASES,
    NEW_KAFKA_PARTITION,
    STREAM_CASES,
    LandingCase,
    Reject,
    Row,
)
from ch_pipeline_tests.corpus.conftest import CorpusRun


def with_known_bugs(cases: list[LandingCase]) -> list:
    return [
        pytest.param(case, id=case.name, marks=[pytest.mark.xfail(strict=True, reason=case.bug)] if case.bug else [])
        for case in cases
    ]


def decoded(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


@pytest.mark.parametrize("case", with_known_bugs(LANDING_CASES))
def test_landing_case(case: LandingCase, corpus_run: CorpusRun):
    coordinates = corpus_run.coordinates[case.name]
    row, reject = corpus_run.rows.get(coordinates), corpus_run.rejects.get(coordinates)
    assert (row is None) != (reject is None), f"{case.name} must be in exactly one of the stream and rejects tables"

    if isinstance(case.expect, Row):
        assert reject is None, f"{case.name} was rejected: {reject['error']}"
        assert {name: row[name] for name in case.expect.columns} == case.expect.columns
        assert row["raw_event"].encode() == case.value  # the message as received, byte for byte
        assert "NA" not in (row["company_name"], row["company_status"], row["postal_code"])
    else:
        assert isinstance(case.expect, Reject)
        assert row is None, f"{case.name} landed as a stream row"
        assert case.expect.reason in reject["error"]
        # Kept as received, so it can be inspected and replayed once the producer is fixed.
        assert decoded(reject["raw_value_base64"]) == case.value
        assert decoded(reject["kafka_key"]) == case.message_key


def test_every_message_lands_once_and_the_run_reports_its_rejects(corpus_run: CorpusRun):
    landed = set(corpus_run.coordinates.values())
    assert len(landed) == len(LANDING_CASES)
    assert landed <= set(corpus_run.rows) | set(corpus_run.rejects)
    assert not set(corpus_run.rows) & set(corpus_run.rejects)
    expected_rejects = sum(isinstance(case.expect, Reject) for case in LANDING_CASES)
    reported = sum(metadata["rejects"] for metadata in corpus_run.landing_metadata)
    assert reported == len(corpus_run.rejects) == expected_rejects


def test_the_sensor_takes_up_a_partition_its_cursor_did_not_know(corpus_run: CorpusRun):
    assert corpus_run.cursor_after_batch_1[str(NEW_KAFKA_PARTITION)] == 1  # its one message is cut


def test_the_readme_lists_every_case():
    """The catalogue in README.md stays complete: each case name appears in it."""
    readme = (Path(__file__).parent / "README.md").read_text()
    names = [case.name for case in (*STREAM_CASES, *LANDING_CASES, *DBT_CASES)]
    missing = [name for name in names if f"`{name}`" not in readme]
    assert not missing, f"add these cases to ch_pipeline_tests/corpus/README.md: {missing}"
