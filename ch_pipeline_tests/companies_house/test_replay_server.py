"""The replay server speaks the streaming protocol: NDJSON, heartbeats, resume, 401/416, faults."""

from __future__ import annotations

import requests
from click.testing import CliRunner

from ch_pipeline.cli import main
from ch_pipeline.companies_house.events import event_bytes, generate_events, read_events
from ch_pipeline.companies_house.replay_server import ReplayServer


def read_lines(url: str, count: int, **kwargs) -> list[bytes]:
    """The first ``count`` lines (heartbeats included) of one connection."""
    with requests.get(url, stream=True, timeout=5, **kwargs) as response:
        assert response.status_code == 200
        assert response.headers["Transfer-Encoding"] == "chunked"
        lines = []
        for line in response.iter_lines():
            lines.append(line)
            if len(lines) == count:
                return lines
    raise AssertionError(f"the stream ended after {len(lines)} lines")


def test_serves_the_generated_events_then_keeps_the_connection_alive_with_heartbeats():
    with ReplayServer(events=30, seed=9, heartbeat_interval=0.05) as server:
        lines = read_lines(server.url, len(server.lines) + 3)
    assert server.lines == [event_bytes(e) for e in generate_events(30, seed=9)]
    assert lines[: len(server.lines)] == server.lines
    assert lines[len(server.lines) :] == [b"", b"", b""], "heartbeats after the last event"


def test_heartbeats_are_sent_between_paced_events():
    with ReplayServer(events=3, seed=1, rate=4, heartbeat_interval=0.05) as server:
        lines = read_lines(server.url, 8)
    assert lines[0] == server.lines[0]
    assert b"" in lines and server.lines[1] in lines


def test_history_is_served_at_once_then_the_live_rate_applies():
    # 200 past events at 1 event/s would take minutes; as history they come before any heartbeat.
    with ReplayServer(events=205, seed=2, rate=1, history=200, heartbeat_interval=0.2) as server:
        lines = read_lines(server.url, 202)
    assert lines[:200] == server.lines[:200], "the history arrives back to back, no heartbeat between"
    assert b"" in lines[200:], "then the live events are paced, with heartbeats in between"


def test_resume_is_inclusive_and_the_retained_window_is_enforced():
    with ReplayServer(events=100, seed=2, first_timepoint=1000, retain=40, heartbeat_interval=0.05) as server:
        first = read_lines(server.url, 1, params={"timepoint": 1070})[0]
        assert b'"timepoint":1070,' in first
        for outside in (1059, 5000, "nonsense"):
            response = requests.get(server.url, params={"timepoint": outside}, timeout=5)
            assert response.status_code == 416
        no_timepoint = read_lines(server.url, 1)[0]
        assert b'"timepoint":1060,' in no_timepoint, "no timepoint: the oldest retained event"


def test_key_check_and_error_pages():
    with ReplayServer(events=5, api_key="k3y", heartbeat_interval=0.05) as server:
        assert requests.get(server.url, timeout=5).status_code == 401
        assert requests.get(server.url, auth=("wrong", ""), timeout=5).status_code == 401
        assert read_lines(server.url, 1, auth=("k3y", ""))[0] == server.lines[0]
        server.fail_next(429, 1)
        throttled = requests.get(server.url, auth=("k3y", ""), timeout=5)
        assert throttled.status_code == 429 and throttled.headers["Content-Type"] == "text/html"
        assert "<h1>429 Too Many Requests</h1>" in throttled.text


def test_drop_after_cuts_the_connection_mid_line():
    with ReplayServer(events=20, seed=3, drop_after=5, max_drops=1, heartbeat_interval=0.05) as server:
        with requests.get(server.url, stream=True, timeout=5) as response:
            body = b""
            try:
                for chunk in response.iter_content(chunk_size=None):
                    body += chunk
            except requests.exceptions.ChunkedEncodingError:
                pass
        assert body.split(b"\n")[:5] == server.lines[:5]
        assert server.lines[5].startswith(body.split(b"\n")[5]) and body.split(b"\n")[5] != server.lines[5]
        assert read_lines(server.url, 10)[:10] == server.lines[:10], "only max_drops connections are cut"


def test_cli_writes_the_same_events_to_a_file(tmp_path):
    path = tmp_path / "events.ndjson"
    result = CliRunner().invoke(main, ["replay-server", "--events", "50", "--seed", "4", "--write-events", str(path)])
    assert result.exit_code == 0, result.output
    assert read_events(path) == generate_events(50, seed=4)
