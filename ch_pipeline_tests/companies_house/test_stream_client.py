"""The stream client against the real replay server: every status, drop and split it can meet."""

from __future__ import annotations

import logging
import threading

import pytest

from ch_pipeline_tests.support.stream import fast_stream, take
from ch_pipeline.companies_house.replay_server import ReplayServer
from ch_pipeline.companies_house.stream_client import (
    Backoff,
    CompaniesHouseStream,
    StreamAuthError,
    StreamError,
    StreamEvent,
    TimepointExpired,
    complete_lines,
)
from ch_pipeline.kafka.broker import free_port

FAST = dict(heartbeat_interval=0.05)




def take_until(stream: CompaniesHouseStream, last_timepoint: int) -> list[StreamEvent]:
    """Events up to and including the first one at ``last_timepoint``."""
    events = []
    for event in stream.events():
        events.append(event)
        if event.timepoint == last_timepoint:
            break
    stream.stop()
    return events


def test_serves_every_line_in_order_and_skips_heartbeats():
    with ReplayServer(events=300, seed=1, **FAST) as server:
        events = take(fast_stream(server.url), len(server.lines))
    assert [e.raw for e in events] == server.lines
    assert [e.timepoint for e in events] == server.timepoints
    assert all(e.company_number for e in events)


def test_lines_split_across_chunks_are_reassembled_byte_for_byte():
    with ReplayServer(events=200, seed=2, split_lines=True, **FAST) as server:
        events = take(fast_stream(server.url), len(server.lines))
    assert [e.raw for e in events] == server.lines


@pytest.mark.timeout(30)  # a client that waits for the body to end hangs here
def test_a_body_without_chunked_encoding_is_read_as_it_arrives():
    # An endless close-delimited body: reading must not wait for a buffer to fill or for the end.
    with ReplayServer(events=40, seed=7, chunked=False, split_lines=True, drop_after=25, max_drops=1, **FAST) as server:
        events = take_until(fast_stream(server.url), server.timepoints[-1])
    assert sorted({e.timepoint for e in events}) == sorted(set(server.timepoints))
    assert all(e.raw in server.lines for e in events)


def test_a_truncated_last_line_is_not_received():
    chunks = [b'{"a":1}\n\n{"b"', b":2}\n", b'{"cut']
    assert list(complete_lines(iter(chunks))) == [b'{"a":1}', b"", b'{"b":2}']


def test_a_line_that_is_not_json_is_kept_without_a_timepoint():
    event = StreamEvent.parse(b"<html>oops</html>")
    assert event.raw == b"<html>oops</html>" and event.timepoint is None and event.envelope is None
    assert StreamEvent.parse(b"[1, 2]").envelope is None
    no_timepoint = StreamEvent.parse(b'{"resource_uri": "/company/SC000001", "event": {}}')
    assert (no_timepoint.timepoint, no_timepoint.company_number) == (None, "SC000001")


def test_dropped_connections_resume_from_the_last_timepoint_without_loss_or_repeats(caplog):
    caplog.set_level(logging.WARNING)
    with ReplayServer(events=400, seed=3, drop_after=70, max_drops=3, **FAST) as server:
        events = take_until(fast_stream(server.url), server.timepoints[-1])
        assert server.drops == 3
    timepoints = [e.timepoint for e in events]
    assert sorted(set(timepoints)) == sorted(set(server.timepoints)), "no timepoint missing"
    assert timepoints == sorted(timepoints)
    served = {tp: server.timepoints.count(tp) for tp in set(server.timepoints)}
    assert all(timepoints.count(tp) <= served[tp] for tp in set(timepoints)), "no repeats beyond the server's duplicates"
    assert sum("connection lost" in r.message and "reconnecting in" in r.message for r in caplog.records) == 3


def test_resume_from_a_timepoint_yields_only_later_events():
    with ReplayServer(events=100, seed=4, first_timepoint=500, **FAST) as server:
        events = take(fast_stream(server.url, timepoint=550), 10)
    assert [e.timepoint for e in events] == [tp for tp in server.timepoints if tp > 550][:10]


@pytest.mark.parametrize("status", [429, 503])
def test_rate_limits_and_server_errors_with_html_bodies_back_off_then_succeed(status, caplog):
    caplog.set_level(logging.WARNING)
    with ReplayServer(events=20, seed=5, **FAST) as server:
        server.fail_next(status, 3)
        events = take(fast_stream(server.url), len(server.lines))
        assert server.requests_served == 4
    assert [e.raw for e in events] == server.lines
    waits = [r.message for r in caplog.records if f"HTTP {status}" in r.message]
    # The HTML error page is only quoted in the log line, never parsed.
    assert len(waits) == 3 and all("reconnecting in" in w and f"<h1>{status} " in w for w in waits)


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap():
    backoff = Backoff(initial=1, cap=8)
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, ceiling in zip(delays, [1, 2, 4, 8, 8, 8]):
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()
    assert backoff.next_delay() <= 1
    assert Backoff(initial=1, cap=8).next_delay(at_least=5) == 5  # Retry-After is honoured


def test_network_errors_are_retried_until_the_server_is_up(caplog):
    caplog.set_level(logging.WARNING)
    port = free_port()
    server = ReplayServer(events=10, seed=6, port=port, **FAST)
    starter = threading.Timer(0.5, server.start)
    starter.start()
    try:
        events = take(fast_stream(f"http://127.0.0.1:{port}/companies"), len(server.lines))
    finally:
        starter.join()
        server.stop()
    assert [e.raw for e in events] == server.lines
    assert any("cannot connect" in r.message for r in caplog.records)


def test_a_rejected_key_stops_with_an_actionable_message():
    with ReplayServer(events=5, api_key="right-key", **FAST) as server:
        with pytest.raises(StreamAuthError, match="streaming.*API key"):
            next(fast_stream(server.url, api_key="wrong-key").events())
        with pytest.raises(StreamAuthError, match="CH_STREAM_API_KEY is not set"):
            next(fast_stream(server.url).events())
        good = take(fast_stream(server.url, api_key="right-key"), 5)
    assert len(good) == 5


def test_a_timepoint_too_old_stops_and_says_what_to_do():
    with ReplayServer(events=50, first_timepoint=1000, **FAST) as server:
        with pytest.raises(TimepointExpired, match="(?i)restart from now.*monthly bulk file dated after the restart") as error:
            next(fast_stream(server.url, timepoint=10).events())
    assert "timepoint 10" in str(error.value) and "416" in str(error.value)


def test_a_timepoint_too_old_restarts_from_now_when_allowed(caplog):
    caplog.set_level(logging.WARNING)
    with ReplayServer(events=50, first_timepoint=1000, **FAST) as server:
        stream = fast_stream(server.url, timepoint=10, restart_from_now_if_expired=True)
        events = take(stream, 5)
    assert [e.timepoint for e in events] == server.timepoints[:5]  # the replay server's "now" is its oldest event
    assert any("416" in r.message and "restarting from now" in r.message for r in caplog.records)


def test_an_unexpected_status_stops_with_the_url_in_the_message():
    with ReplayServer(events=5, **FAST) as server:
        with pytest.raises(StreamError, match="404.*CH_STREAM_URL"):
            next(fast_stream(server.url.replace("/companies", "/nothing")).events())
