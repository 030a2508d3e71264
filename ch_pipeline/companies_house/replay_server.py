"""A local server speaking the Companies House streaming protocol, with generated events.

``ReplayServer(events=1000, seed=7).start()`` serves ``GET /companies`` on a free loopback port
(``server.url``); ``ch-pipeline replay-server`` runs it in the foreground. Like the real API
(docs/architecture.md §3): NDJSON over chunked HTTP, a blank heartbeat line every few seconds when there is no
event, consecutive integer timepoints, ``?timepoint=N`` resumes at event N (inclusive), basic auth
with the key as user (401 when ``api_key`` is set and does not match), 416 for a timepoint outside
the retained window, and the connection stays open with heartbeats after the last event.

One deliberate difference: a connection without ``timepoint`` starts at the oldest retained event
rather than at "now", so a fresh producer sees the whole generated history.

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

import click

from ch_pipeline.companies_house.events import event_bytes, generate_events, timepoint_of, write_events

log = logging.getLogger(__name__)

STREAM_PATH = "/companies"
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
    host: str = "127.0.0.1"
    port: int = 0
    lines: list[bytes] = field(init=False, repr=False)
    timepoints: list[int] = field(init=False, repr=False)
    drops: int = field(default=0, init=False)
    requests_served: int = field(default=0, init=False)
    _failures: list[int] = field(default_factory=list, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _httpd: ThreadingHTTPServer | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        generated = generate_events(self.events, self.seed, self.first_timepoint)
        self.lines = [event_bytes(event) for event in generated]
        self.timepoints = [timepoint_of(event) for event in generated]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{STREAM_PATH}"

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

    def start_index(self, timepoint: int | None) -> int | None:
        """The first line to serve for a ``timepoint`` request; None when it is outside the window."""
        window_start = self.first_timepoint
        if self.retain is not None:
            window_start = max(window_start, self.timepoints[-1] - self.retain + 1)
        if timepoint is None:
            timepoint = window_start
        if timepoint < window_start or timepoint > self.timepoints[-1] + 1:
            return None
        return bisect.bisect_left(self.timepoints, timepoint)  # timepoints are sorted

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
            if url.path != STREAM_PATH:
                return self._error(HTTPStatus.NOT_FOUND)
            if server.api_key is not None and self._api_key() != server.api_key:
                return self._error(HTTPStatus.UNAUTHORIZED)
            failure = server._next_failure()
            if failure is not None:
                return self._error(HTTPStatus(failure))
            try:
                timepoint = int(parse_qs(url.query)["timepoint"][0]) if "timepoint" in url.query else None
            except ValueError:
                return self._error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            start = server.start_index(timepoint)
            if start is None:
                return self._error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/json")
            if server.chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Connection", "close")
            self.end_headers()
            try:
                self._stream_from(start)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away: nothing to clean up
            self.close_connection = True

        def _stream_from(self, index: int) -> None:
            sent_on_connection = sent_live = 0
            started = last_write = time.monotonic()
            while not server._stopping.is_set():
                now = time.monotonic()
                live = index >= server.history
                next_event_at = started + sent_live / server.rate if server.rate and live else now
                if index < len(server.lines) and now >= next_event_at:
                    line = server.lines[index]
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
                if index < len(server.lines):
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


@click.command("replay-server")
@click.option("--port", default=8765, show_default=True, help="Loopback port to listen on.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--events", "events", default=1000, show_default=True, help="Distinct events to serve (plus a few duplicates).")
@click.option("--rate", default=None, type=float, help="Events per second on each connection (default: as fast as possible).")
@click.option("--seed", default=0, show_default=True, help="Seed of the event generator (same seed, same events).")
@click.option("--first-timepoint", default=1, show_default=True)
@click.option("--retain", default=None, type=int, help="Only the last N timepoints can be resumed from (older: 416).")
@click.option("--heartbeat", default=5.0, show_default=True, help="Seconds between heartbeat lines when idle.")
@click.option("--api-key", default=None, help="Require this key as basic-auth user (else 401).")
@click.option("--drop-after", default=None, type=int, help="Fault: cut each connection mid-line after N events.")
@click.option("--max-drops", default=None, type=int, help="Fault: cut at most this many connections.")
@click.option("--split-lines", is_flag=True, help="Fault: send every line in two chunks.")
@click.option("--fail-status", default=None, type=click.Choice(["429", "500", "502", "503", "504"]),
              help="Fault: answer --fail-requests requests with this status and an HTML page.")
@click.option("--fail-requests", default=1, show_default=True)
@click.option("--write-events", "events_file", default=None, type=click.Path(dir_okay=False),
              help="Only write the events as NDJSON to this file, then exit.")
def replay_server_command(port, host, events, rate, seed, first_timepoint, retain, heartbeat, api_key,
                          drop_after, max_drops, split_lines, fail_status, fail_requests, events_file) -> None:  # fmt: skip
    """Serve generated company events over the Companies House streaming protocol (foreground)."""
    from ch_pipeline.processes import stop_requested

    if events_file:
        write_events(events_file, generate_events(events, seed, first_timepoint))
        click.echo(f"wrote {events} events (+ duplicates) to {events_file}")
        return
    server = ReplayServer(
        events=events, seed=seed, rate=rate, first_timepoint=first_timepoint, retain=retain,
        heartbeat_interval=heartbeat, api_key=api_key, drop_after=drop_after, max_drops=max_drops,
        split_lines=split_lines, host=host, port=port,
    )  # fmt: skip
    if fail_status:
        server.fail_next(int(fail_status), fail_requests)
    try:
        server.start()
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port} ({exc}): pass --port with a free port") from exc
    click.echo(f"replay server ready: CH_STREAM_URL={server.url} ({len(server.lines)} lines, seed {seed})")
    with stop_requested() as stop:
        try:
            while not stop.wait(1.0):
                pass
        finally:
            server.stop()
        click.echo("replay server stopped")
