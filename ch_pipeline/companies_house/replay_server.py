"""A local server speaking the Companies House streaming protocol, with generated events.

``ReplayServer(events=1000, seed=7).start()`` serves ``GET /companies`` on a free loopback port
(``server.url``) and every other stream of the catalogue (``server.url_for("officers")``, paths in
``streams.py``), each with its own events and its own timepoints (they are unrelated across streams,
as on the real API: each stream starts at its own base); ``ch-pipeline replay-server`` runs it in
the foreground. A stream's events are generated on its first request, so a companies-only user pays
nothing for the others. Like the real API
(docs/architecture.md §3): NDJSON over chunked HTTP, a blank heartbeat line every few seconds when there is no
event, consecutive integer timepoints, ``?timepoint=N`` resumes at event N (inclusive), basic auth
with the key as user (401 when ``api_key`` is set and does not match), 416 for a timepoint outside
the retained window, and the connection stays open with heartbeats after the last event.

One deliberate difference: a connection without ``timepoint`` starts at the oldest retained event
rather than at "now", so a fresh producer sees the whole generated history.

A key serves at most ``max_connections_per_key`` open streams at once (Companies House allows "a
handful", about ten); one more gets 429, as the real API rate-limits it.

Fault injection for tests: ``drop_after`` (cut the connection, mid-line, after that many events on
a connection, at most ``max_drops`` times), ``split_lines`` (every line sent in two chunks, cut
inside a multi-byte character when there is one), ``fail_next(status, k)`` (the next ``k`` requests
get ``status`` with an HTML body, like a proxy's 429/503 page).
"""

from __future__ import annotations

import base64
import bisect
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from ch_pipeline.companies_house.events import event_bytes, timepoint_of
from ch_pipeline.companies_house.stream_events import generate_stream_events
from ch_pipeline.companies_house.streams import COMPANIES, STREAM_NAMES, stream, stream_for_path

log = logging.getLogger(__name__)

STREAM_PATH = "/companies"
MAX_CONNECTIONS_PER_KEY = 10
# Where each stream's timepoints start (plus first_timepoint - 1): far apart, so a checkpoint or
# timepoint of one stream used on another is out of range (416) instead of silently "working".
STREAM_TIMEPOINT_BASE = {name: 1 + 10_000_000 * index for index, name in enumerate(STREAM_NAMES)}


@dataclass(frozen=True)
class StreamLog:
    """One stream's lines as served, and their timepoints (sorted, duplicates repeated)."""

    lines: list[bytes]
    timepoints: list[int]
_ERROR_PAGE = "<html><head><title>{status} {phrase}</title></head><body><h1>{status} {phrase}</h1><hr><center>nginx</center></body></html>\n"


@dataclass
class ReplayServer:
    events: int = 1000
    seed: int = 0
    rate: float | None = None  # events per second on each connection; None = as fast as possible
    # The first `history` events are already in the past: served at once, as the real API replays its
    # retained events to a client resuming from an old timepoint; `rate` applies after them.
    history: int = 0
    first_timepoint: int = 1
    retain: int | None = None  # only the last `retain` timepoints can be resumed from (else 416)
    heartbeat_interval: float = 5.0
    api_key: str | None = None
    drop_after: int | None = None
    max_drops: int | None = None
    split_lines: bool = False
    chunked: bool = True  # False: a close-delimited body, as behind a proxy that strips chunking
    max_connections_per_key: int | None = MAX_CONNECTIONS_PER_KEY  # None: no limit
    stream_events: dict[str, int] = field(default_factory=dict)  # per-stream event counts (default `events`)
    host: str = "127.0.0.1"
    port: int = 0
    lines: list[bytes] = field(init=False, repr=False)
    timepoints: list[int] = field(init=False, repr=False)
    drops: int = field(default=0, init=False)
    requests_served: int = field(default=0, init=False)
    _failures: list[int] = field(default_factory=list, init=False, repr=False)
    _logs: dict[str, StreamLog] = field(default_factory=dict, init=False, repr=False)
    _open: dict[str | None, int] = field(default_factory=dict, init=False, repr=False)  # key -> open streams
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _httpd: ThreadingHTTPServer | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        companies = self.log(COMPANIES)
        self.lines, self.timepoints = companies.lines, companies.timepoints

    @property
    def url(self) -> str:
        return self.url_for(COMPANIES)

    def url_for(self, stream_name: str) -> str:
        return f"http://{self.host}:{self.port}{stream(stream_name).path}"

    def first_timepoint_of(self, stream_name: str) -> int:
        return self.first_timepoint + STREAM_TIMEPOINT_BASE[stream_name] - 1

    def log(self, stream_name: str) -> StreamLog:
        """The stream's served lines, generated on first use (deterministic: the seed, the stream)."""
        with self._lock:
            if stream_name not in self._logs:
                count = self.stream_events.get(stream_name, self.events)
                generated = generate_stream_events(stream_name, count, self.seed, self.first_timepoint_of(stream_name))
                self._logs[stream_name] = StreamLog([event_bytes(e) for e in generated], [timepoint_of(e) for e in generated])
            return self._logs[stream_name]

    def open_connections(self, key: str | None = None) -> int:
        with self._lock:
            return self._open.get(key, 0)

    def start(self) -> "ReplayServer":
        self._httpd = ThreadingHTTPServer((self.host, self.port), _handler_for(self))
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        # A short poll interval: stop() returns promptly (shutdown waits for the next poll).
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="replay-server", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "ReplayServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def fail_next(self, status: int, requests: int) -> None:
        """Answer the next ``requests`` requests with ``status`` and an HTML error page."""
        with self._lock:
            self._failures.extend([status] * requests)

    def start_index(self, timepoint: int | None, stream_name: str = COMPANIES) -> int | None:
        """The first line to serve for a ``timepoint`` request; None when it is outside the window."""
        timepoints = self.log(stream_name).timepoints
        window_start = self.first_timepoint_of(stream_name)
        # A stream with no events (``stream_events`` 0) is a quiet one: open, heartbeats only.
        last = timepoints[-1] if timepoints else window_start - 1
        if self.retain is not None:
            window_start = max(window_start, last - self.retain + 1)
        if timepoint is None:
            timepoint = window_start
        if timepoint < window_start or timepoint > last + 1:
            return None
        return bisect.bisect_left(timepoints, timepoint)  # timepoints are sorted

    def _open_stream(self, key: str | None) -> bool:
        """Take one of the key's connections; False when all are in use (the caller answers 429)."""
        with self._lock:
            if self.max_connections_per_key is not None and self._open.get(key, 0) >= self.max_connections_per_key:
                return False
            self._open[key] = self._open.get(key, 0) + 1
            return True

    def _close_stream(self, key: str | None) -> None:
        with self._lock:
            self._open[key] -= 1

    def _next_failure(self) -> int | None:
        with self._lock:
            self.requests_served += 1
            return self._failures.pop(0) if self._failures else None

    def _take_drop(self) -> bool:
        with self._lock:
            if self.max_drops is not None and self.drops >= self.max_drops:
                return False
            self.drops += 1
            return True


def _handler_for(server: ReplayServer) -> type[BaseHTTPRequestHandler]:
    class StreamHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # chunked transfer encoding, as the real API

        def log_message(self, format: str, *args: object) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            spec = stream_for_path(url.path)
            if spec is None:
                return self._error(HTTPStatus.NOT_FOUND)
            key = self._api_key()
            if server.api_key is not None and key != server.api_key:
                return self._error(HTTPStatus.UNAUTHORIZED)
            failure = server._next_failure()
            if failure is not None:
                return self._error(HTTPStatus(failure))
            try:
                timepoint = int(parse_qs(url.query)["timepoint"][0]) if "timepoint" in url.query else None
            except ValueError:
                return self._error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            start = server.start_index(timepoint, spec.name)
            if start is None:
                return self._error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            if not server._open_stream(key):
                return self._error(HTTPStatus.TOO_MANY_REQUESTS)
            try:
                self._serve(server.log(spec.name).lines, start)
            finally:
                server._close_stream(key)

        def _serve(self, lines: list[bytes], start: int) -> None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/json")
            if server.chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Connection", "close")
            self.end_headers()
            try:
                self._stream_from(lines, start)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away: nothing to clean up
            self.close_connection = True

        def _stream_from(self, lines: list[bytes], index: int) -> None:
            sent_on_connection = sent_live = 0
            started = last_write = time.monotonic()
            while not server._stopping.is_set():
                now = time.monotonic()
                live = index >= server.history
                next_event_at = started + sent_live / server.rate if server.rate and live else now
                if index < len(lines) and now >= next_event_at:
                    line = lines[index]
                    if server.drop_after is not None and sent_on_connection >= server.drop_after and server._take_drop():
                        return self._drop_mid_line(line)
                    self._send_line(line)
                    index += 1
                    sent_on_connection += 1
                    if live:
                        sent_live += 1
                    else:
                        started = now  # the live rate starts when the history has been sent
                    last_write = now
                    continue
                if now - last_write >= server.heartbeat_interval:
                    self._chunk(b"\n")  # heartbeat: the connection is alive, no event to send
                    last_write = now
                    continue
                wake_at = last_write + server.heartbeat_interval
                if index < len(lines):
                    wake_at = min(wake_at, next_event_at)
                server._stopping.wait(max(0.0, wake_at - now))

        def _send_line(self, line: bytes) -> None:
            data = line + b"\n"
            if server.split_lines:
                cut = _split_point(data)
                self._chunk(data[:cut])
                self._chunk(data[cut:])
            else:
                self._chunk(data)

        def _drop_mid_line(self, line: bytes) -> None:
            """Send half of the next line, then cut the connection without ending the chunked body."""
            self._chunk(line[: len(line) // 2])
            self.connection.shutdown(socket.SHUT_RDWR)

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if server.chunked else data)
            self.wfile.flush()

        def _api_key(self) -> str | None:
            header = self.headers.get("Authorization", "")
            if not header.startswith("Basic "):
                return None
            user, _, _password = base64.b64decode(header[6:]).decode("utf-8", "replace").partition(":")
            return user

        def _error(self, status: HTTPStatus) -> None:
            body = _ERROR_PAGE.format(status=status.value, phrase=status.phrase).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return StreamHandler


def _split_point(data: bytes) -> int:
    """Cut inside a multi-byte UTF-8 character if there is one (the hardest split), else mid-line."""
    for i, byte in enumerate(data):
        if byte >= 0xC0:  # the lead byte of a multi-byte character
            return i + 1
    return len(data) // 2
