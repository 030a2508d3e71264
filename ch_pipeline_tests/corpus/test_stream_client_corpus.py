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
    if case.name == "html_503_body":
        # The error page is quoted in one log line, so the user sees what the proxy said.
        waits = [r.getMessage() for r in caplog.records if "HTTP 503" in r.getMessage()]
        assert len(waits) == 1 and "503 Service Temporarily Unavailable" in waits[0] and "reconnecting in" in waits[0]
    if case.name == "truncated_last_line":
        assert any("connection lost after timepoint 101" in r.getMessage() for r in caplog.records)
