"""The replay server serves every stream, each with its own timepoints, and limits a key's open streams."""

from __future__ import annotations

import contextlib
import json
import time

import pytest
import requests
from click.testing import CliRunner

from ch_pipeline.cli import main
from ch_pipeline.companies_house.events import event_bytes, read_events
from ch_pipeline.companies_house.replay_server import MAX_CONNECTIONS_PER_KEY, ReplayServer
from ch_pipeline.companies_house.stream_events import generate_stream_events
from ch_pipeline.companies_house.streams import STREAM_NAMES, stream
from ch_pipeline_tests.companies_house.test_replay_server import read_lines


@pytest.mark.parametrize("name", STREAM_NAMES)
def test_every_stream_is_served_from_its_own_timepoints_and_resumes_inclusively(name):
    with ReplayServer(events=40, seed=3, heartbeat_interval=0.05) as server:
        served = server.log(name)
        first = server.first_timepoint_of(name)
        assert served.lines == [event_bytes(e) for e in generate_stream_events(name, 40, 3, first)]
        lines = read_lines(server.url_for(name), len(served.lines) + 1)
        assert lines == [*served.lines, b""], "every event, then heartbeats"
        assert {json.loads(line)["resource_kind"] for line in lines[:-1]} <= set(stream(name).resource_kinds)
        resumed = read_lines(server.url_for(name), 1, params={"timepoint": first + 20})[0]
        assert json.loads(resumed)["event"]["timepoint"] == first + 20
        other = "officers" if name == "companies" else "companies"
        response = requests.get(server.url_for(name), params={"timepoint": server.first_timepoint_of(other) + 5}, timeout=5)
        assert response.status_code == 416, "another stream's timepoint is not this stream's"
    assert len({server.first_timepoint_of(n) for n in STREAM_NAMES}) == len(STREAM_NAMES)


def test_a_stream_without_events_is_open_and_quiet():
    """``stream_events`` 0: heartbeats only (the production test's idle producers), resumable from its start."""
    with ReplayServer(events=5, stream_events={"officers": 0}, heartbeat_interval=0.05) as server:
        assert read_lines(server.url_for("officers"), 2) == [b"", b""]
        first = server.first_timepoint_of("officers")
        assert read_lines(server.url_for("officers"), 1, params={"timepoint": first})[0] == b""
        assert requests.get(server.url_for("officers"), params={"timepoint": first + 1}, timeout=5).status_code == 416


def test_the_companies_stream_keeps_its_url_lines_and_timepoints():
    with ReplayServer(events=30, seed=9, first_timepoint=500, heartbeat_interval=0.05) as server:
        assert server.url == server.url_for("companies") and server.url.endswith("/companies")
        assert server.lines == server.log("companies").lines and server.timepoints[0] == 500
        assert requests.get(server.url.replace("/companies", "/nonsense"), timeout=5).status_code == 404


def test_a_key_serves_ten_open_streams_and_the_eleventh_gets_429():
    with ReplayServer(events=5, api_key="k3y", heartbeat_interval=0.05) as server, contextlib.ExitStack() as stack:
        readers = []  # kept: a discarded line iterator makes urllib3 close its connection
        for index in range(MAX_CONNECTIONS_PER_KEY):  # across streams: the limit is the key's, not a stream's
            name = STREAM_NAMES[index % len(STREAM_NAMES)]
            response = stack.enter_context(requests.get(server.url_for(name), auth=("k3y", ""), stream=True, timeout=5))
            assert response.status_code == 200
            readers.append(response.iter_lines())
            next(readers[-1])
        time.sleep(0.2)  # several heartbeats: a closed connection would have been noticed by now
        assert server.open_connections("k3y") == MAX_CONNECTIONS_PER_KEY
        refused = requests.get(server.url_for("officers"), auth=("k3y", ""), timeout=5)
        assert refused.status_code == 429 and "<h1>429 Too Many Requests</h1>" in refused.text
        readers.clear()
        stack.close()  # the clients go away; the server notices at its next heartbeat write
        deadline = time.monotonic() + 5
        while server.open_connections("k3y") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.open_connections("k3y") == 0
        assert read_lines(server.url_for("officers"), 1, auth=("k3y", ""))[0] == server.log("officers").lines[0]


def test_the_connection_limit_is_configurable_and_per_key():
    with ReplayServer(events=5, heartbeat_interval=0.05, max_connections_per_key=1) as server:
        with requests.get(server.url_for("charges"), auth=("a", ""), stream=True, timeout=5) as held:
            reader = held.iter_lines()  # kept alive: discarding it would close the connection
            next(reader)
            time.sleep(0.2)  # several heartbeats: a closed connection would have been noticed by now
            assert server.open_connections("a") == 1
            assert requests.get(server.url_for("filings"), auth=("a", ""), timeout=5).status_code == 429
            assert read_lines(server.url_for("filings"), 1, auth=("b", ""))[0] == server.log("filings").lines[0]


def test_cli_writes_a_streams_events_as_served(tmp_path):
    path = tmp_path / "officers.ndjson"
    result = CliRunner().invoke(main, ["replay-server", "--events", "30", "--seed", "4", "--stream", "officers", "--write-events", str(path)])
    assert result.exit_code == 0, result.output
    with ReplayServer(events=30, seed=4) as server:
        assert [event_bytes(e) for e in read_events(path)] == server.log("officers").lines
