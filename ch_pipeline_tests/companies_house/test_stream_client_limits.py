"""The stream client's bounds on hostile input (issue 19): over-long lines, deep JSON, Retry-After.

Each is tested at the client's public surface against a real loopback server, plus unit tests of the
pieces. No assertion measures our own speed: bounds are asserted on memory held, events received
and requests made.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import tracemalloc
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler

import pytest

from ch_pipeline_tests.support.loopback_http import LoopbackHTTPServer
from ch_pipeline_tests.support.stream import fast_stream, take
from ch_pipeline.companies_house.stream_client import (
    MAX_LINE_BYTES,
    MAX_RETRY_AFTER,
    Backoff,
    CompaniesHouseStream,
    StreamEvent,
    complete_lines,
    retry_after_seconds,
)
from ch_pipeline_tests.corpus.cases import LINE_A, LINE_B, Response
from ch_pipeline_tests.corpus.scripted_server import ScriptedStreamServer

MiB = 1 << 20
PIECE = b"x" * (64 << 10)  # one 64 KiB chunk, sent again and again: the test itself holds little
HUGE_LINE_CHUNKS = 1024  # 64 MiB in all
DEEP = b"[" * 100_000 + b"]" * 100_000  # far past the interpreter's recursion limit




def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("ch_pipeline") and r.levelno == logging.WARNING]


# --- Over-long lines -------------------------------------------------------------------------


def test_the_line_limit_is_far_above_a_real_event_and_bounded():
    assert 1 * MiB <= MAX_LINE_BYTES <= 16 * MiB


@pytest.mark.timeout(120)  # the old quadratic reassembly would take minutes here, not fail an assert
def test_a_64_mib_line_is_dropped_without_holding_more_than_the_limit(caplog):
    caplog.set_level(logging.WARNING)
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        held: list[int] = []

        def chunks() -> Iterator[bytes]:
            yield LINE_A + b"\n"
            for _ in range(HUGE_LINE_CHUNKS):
                # Whatever the reassembly keeps between chunks shows here, checked at every chunk.
                held.append(tracemalloc.get_traced_memory()[0] - baseline)
                assert held[-1] < MAX_LINE_BYTES + MiB, f"holding {held[-1]} bytes after {len(held)} chunks"
                yield PIECE
            yield b"\n" + LINE_B + b"\n"

        lines = list(complete_lines(chunks()))
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    assert lines == [LINE_A, LINE_B]
    assert peak < MAX_LINE_BYTES + MiB
    assert any(f"{HUGE_LINE_CHUNKS * len(PIECE)} bytes" in w for w in warnings_of(caplog))


def test_a_line_of_exactly_the_limit_is_kept_and_one_byte_more_is_dropped(caplog):
    caplog.set_level(logging.WARNING)
    dropped: list[int] = []
    chunks = [b"12345", b"678\n12", b"3456789\nok\n", b"123456789"]
    assert list(complete_lines(iter(chunks), max_line_bytes=8, on_overlong=dropped.append)) == [b"12345678", b"ok"]
    assert dropped == [9]
    # The cut last line is reported as truncated with its full length, even though it was not kept.
    assert any("truncated line of 9 bytes" in w for w in warnings_of(caplog))


def test_a_line_longer_than_the_limit_within_one_chunk_is_dropped_too():
    dropped: list[int] = []
    lines = complete_lines(iter([b"a\n" + b"y" * 20 + b"\nb\n"]), max_line_bytes=8, on_overlong=dropped.append)
    assert list(lines) == [b"a", b"b"] and dropped == [20]


def test_many_one_byte_chunks_are_reassembled_exactly():
    line = b'{"a":"' + b"z" * 5000 + b'"}'
    chunks = [bytes([byte]) for byte in line + b"\n" + line + b"\n"]
    assert list(complete_lines(iter(chunks))) == [line, line]


@pytest.mark.timeout(120)  # see above: the old client hangs for minutes on this line
def test_the_client_drops_a_64_mib_line_logs_it_and_the_next_event_arrives(caplog):
    caplog.set_level(logging.WARNING)
    body = (LINE_A + b"\n", *(PIECE,) * HUGE_LINE_CHUNKS, b"\n" + LINE_B + b"\n")
    with ScriptedStreamServer([Response(body)]) as server:
        events = take(fast_stream(server.url), 2)
        queries = list(server.queries)
    assert [e.raw for e in events] == [LINE_A, LINE_B]
    assert queries == [""], "the stream continued on the same connection"
    (warning,) = [w for w in warnings_of(caplog) if "dropped" in w]
    assert f"{HUGE_LINE_CHUNKS * len(PIECE)} bytes" in warning
    assert f"{MAX_LINE_BYTES}-byte limit" in warning
    assert "after timepoint 101" in warning  # LINE_A's: the last good event before it


# --- Deeply nested JSON ----------------------------------------------------------------------


def test_deeply_nested_json_is_a_line_that_is_not_json():
    event = StreamEvent.parse(DEEP)
    assert (event.raw, event.envelope, event.timepoint, event.company_number) == (DEEP, None, None, None)
    nested_in_an_event = b'{"event": {"timepoint": 7}, "data": ' + DEEP + b"}"
    assert StreamEvent.parse(nested_in_an_event).envelope is None


@pytest.mark.timeout(30)
def test_the_client_forwards_a_deeply_nested_line_like_any_other_non_json_line():
    # The client's rule for a line that is not a JSON object: kept and forwarded without a
    # timepoint (the landing step rejects it with its bytes), never a crash of the producer.
    with ScriptedStreamServer([Response((LINE_A + b"\n", DEEP + b"\n", LINE_B + b"\n"))]) as server:
        events = take(fast_stream(server.url), 3)
    assert [e.raw for e in events] == [LINE_A, DEEP, LINE_B]
    assert [e.timepoint for e in events] == [101, None, 102]


# --- Retry-After ----------------------------------------------------------------------------

NOW = datetime(2026, 11, 2, 10, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "value, seconds",
    [("0", 0.0), ("120", 120.0), (" 7 ", 7.0), ("2.5", 2.5), (str(MAX_RETRY_AFTER + 1), MAX_RETRY_AFTER),
     ("9" * 400, MAX_RETRY_AFTER)],
)  # fmt: skip
def test_retry_after_delta_seconds(value, seconds):
    assert retry_after_seconds(value, now=NOW) == seconds


@pytest.mark.parametrize(
    "value", [None, "", "nan", "NaN", "inf", "-inf", "Infinity", "-5", "1e3", "0x10", "soon", "5 seconds", "1_000"]
)
def test_retry_after_garbage_falls_back_to_the_normal_backoff(value):
    assert retry_after_seconds(value, now=NOW) is None


def test_retry_after_http_date():
    assert retry_after_seconds(format_datetime(NOW + timedelta(seconds=90), usegmt=True), now=NOW) == 90.0
    assert retry_after_seconds("Mon, 02 Nov 2026 10:01:00 GMT", now=NOW) == 60.0
    assert retry_after_seconds("Mon, 02 Nov 2026 11:01:00 +0100", now=NOW) == 60.0
    assert retry_after_seconds("Mon, 02 Nov 2026 09:00:00 GMT", now=NOW) == 0.0  # in the past: retry now
    assert retry_after_seconds("Tue, 03 Nov 2026 10:00:00 GMT", now=NOW) == MAX_RETRY_AFTER
    assert retry_after_seconds("Mon, 99 Foo 2026 10:00:00 GMT", now=NOW) is None


def test_the_backoff_ignores_a_wait_that_is_not_a_finite_number():
    for bad in (math.nan, math.inf, -1.0):
        assert 0.5 <= Backoff(initial=1, cap=1).next_delay(at_least=bad) <= 1


class RateLimitedServer(LoopbackHTTPServer):
    """Answers every request with 429 and the given Retry-After; counts the requests."""

    def __init__(self, retry_after: str) -> None:
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.requests += 1
                body = b"<html><h1>429 Too Many Requests</h1></html>"
                self.send_response(429)
                self.send_header("Retry-After", retry_after)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)


def requests_within(stream: CompaniesHouseStream, server: RateLimitedServer, window: float) -> int:
    """Let the client run against the server for ``window`` seconds; the requests it made."""
    thread = threading.Thread(target=lambda: next(stream.events(), None), daemon=True)
    thread.start()
    thread.join(window)
    stream.stop()
    thread.join(10)
    assert not thread.is_alive(), "stop() ends the wait"
    return server.requests


def logged_delays(caplog: pytest.LogCaptureFixture) -> list[float]:
    return [float(m) for w in warnings_of(caplog) for m in re.findall(r"reconnecting in (\S+)s", w)]


@pytest.mark.timeout(30)
def test_retry_after_nan_does_not_disable_the_backoff(caplog):
    caplog.set_level(logging.WARNING)
    with RateLimitedServer("nan") as server:
        # Waits of 0.5-1 s: in 2 s at most 5 requests (the first, then one per wait); without a
        # backoff it is hundreds.
        made = requests_within(CompaniesHouseStream(server.url, backoff=Backoff(initial=1, cap=1)), server, 2.0)
    assert 1 <= made <= 5, made
    assert logged_delays(caplog) and all(0.5 <= delay <= 1 for delay in logged_delays(caplog))


@pytest.mark.timeout(30)
def test_a_valid_retry_after_is_honoured_beyond_the_reconnect_backoff(caplog):
    caplog.set_level(logging.WARNING)
    with RateLimitedServer("1") as server:
        made = requests_within(fast_stream(server.url), server, 1.5)
    assert 1 <= made <= 2, made
    assert logged_delays(caplog) and all(delay == 1.0 for delay in logged_delays(caplog))
