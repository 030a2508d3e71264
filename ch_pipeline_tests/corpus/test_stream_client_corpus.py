"""Corpus, stream client layer: exact HTTP bodies in, the event lines the client yields out."""

from __future__ import annotations

import logging

import pytest

from ch_pipeline.companies_house.stream_client import Backoff, CompaniesHouseStream
from ch_pipeline_tests.corpus.cases import STREAM_CASES, StreamCase
from ch_pipeline_tests.corpus.scripted_server import ScriptedStreamServer


@pytest.mark.timeout(30)  # a client that waited for a line that never ends would hang here
@pytest.mark.parametrize("case", STREAM_CASES, ids=lambda case: case.name)
def test_stream_client_case(case: StreamCase, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING)
    with ScriptedStreamServer(case.responses) as server:
        stream = CompaniesHouseStream(server.url, backoff=Backoff(initial=0.01, cap=0.05), read_timeout=case.read_timeout)
        received = []
        for event in stream.events():
            received.append(event)
            if len(received) == len(case.expected_lines):
                break
        stream.stop()
        queries = list(server.queries)

    assert [event.raw for event in received] == list(case.expected_lines)
    assert all(event.envelope is not None and event.timepoint is not None for event in received)
    assert tuple(queries) == case.expected_requests
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("ch_pipeline")]
    if case.expected_warning is None:
        assert warnings == []
    else:
        assert any(case.expected_warning in w for w in warnings), warnings
    if case.name == "html_503_body":
        # The error page is quoted in the log line, so the user sees what the proxy said.
        assert any("503 Service Temporarily Unavailable" in w and "reconnecting in" in w for w in warnings)
