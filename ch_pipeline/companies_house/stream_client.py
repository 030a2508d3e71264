"""A resumable client for the Companies House streaming API (DESIGN §3).

``CompaniesHouseStream(url, api_key, timepoint).events()`` yields every event line once, in stream
order, across reconnects: it resumes each new connection from the last timepoint it yielded.

API facts it is built on (developer-specs.company-information.service.gov.uk/streaming-api):
basic auth with the stream key as user and an empty password; NDJSON whose chunks do not align
with lines; blank lines are heartbeats; ``?timepoint=N`` resumes; 401 = key rejected, 416 =
timepoint invalid or too old (about 3 days are kept), 429 = rate limited; 5xx and dropped
connections happen in practice.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import requests
import urllib3

from ch_pipeline.companies_house.events import company_number_of

log = logging.getLogger(__name__)

HEARTBEAT = b""


class StreamError(RuntimeError):
    """The stream cannot continue without the user's action; the message says which."""


class StreamAuthError(StreamError):
    pass


class TimepointExpired(StreamError):
    pass


@dataclass(frozen=True)
class StreamEvent:
    """One event line: ``raw`` is the line exactly as received (no newline), the Kafka value."""

    raw: bytes
    envelope: dict | None  # None when the line is not a JSON object (kept and forwarded, never dropped)
    timepoint: int | None
    company_number: str | None

    @classmethod
    def parse(cls, raw: bytes) -> "StreamEvent":
        try:
            envelope = json.loads(raw)
        except ValueError:
            return cls(raw, None, None, None)
        if not isinstance(envelope, dict):
            return cls(raw, None, None, None)
        try:
            timepoint = int(envelope["event"]["timepoint"])
        except (ValueError, TypeError, KeyError):
            timepoint = None  # still forwarded; only the checkpoint cannot use it
        return cls(raw, envelope, timepoint, company_number_of(envelope))


@dataclass
class Backoff:
    """Capped exponential backoff with jitter: waits ``initial * 2**n`` up to ``cap`` seconds.

    The wait is drawn from [delay/2, delay] so that many clients do not reconnect in lockstep.
    """

    initial: float = 1.0
    cap: float = 60.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self, at_least: float = 0.0) -> float:
        delay = min(self.cap, self.initial * 2**self.attempt)
        self.attempt += 1
        return max(min(at_least, self.cap), self.rng.uniform(delay / 2, delay))

    def reset(self) -> None:
        self.attempt = 0


RETRIED_STATUSES = {429, 500, 502, 503, 504}
# urllib3's own errors reach us from raw.read1 (requests wraps them only inside iter_content).
_NETWORK_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError, urllib3.exceptions.HTTPError)


@dataclass
class CompaniesHouseStream:
    """Iterate ``events()``; call ``stop()`` from another thread to end the iteration.

    ``timepoint``: resume point (the last delivered event's timepoint); events at or before it are
    not yielded again, since the API may re-send the event at the resume point itself.
    ``restart_from_now_if_expired``: on 416, continue from "now" (events in the gap are lost: reload
    the bulk snapshot) instead of stopping.
    """

    url: str
    api_key: str | None = None
    timepoint: int | None = None
    restart_from_now_if_expired: bool = False
    backoff: Backoff = field(default_factory=Backoff)
    connect_timeout: float = 10.0
    # The API sends heartbeats; a connection silent for this long is dead and is reopened.
    read_timeout: float = 90.0
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _session: requests.Session = field(default_factory=requests.Session, init=False)

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def events(self) -> Iterator[StreamEvent]:
        while not self.stopped:
            try:
                response = self._connect()
            except _NETWORK_ERRORS as exc:
                self._wait(f"cannot connect to {self.url}: {exc}")
                continue
            with response:
                if response.status_code != 200:
                    self._handle_error_status(response)
                    continue
                log.info("connected to %s (timepoint=%s)", self.url, self.timepoint)
                try:
                    yield from self._read(response)
                except _NETWORK_ERRORS as exc:
                    if not self.stopped:
                        self._wait(f"connection lost after timepoint {self.timepoint}: {exc}")
                    continue
            if not self.stopped:
                self._wait(f"the server closed the stream after timepoint {self.timepoint}")

    def _connect(self) -> requests.Response:
        params = {"timepoint": self.timepoint} if self.timepoint is not None else None
        auth = (self.api_key, "") if self.api_key else None
        return self._session.get(
            self.url, params=params, auth=auth, stream=True, timeout=(self.connect_timeout, self.read_timeout)
        )

    def _read(self, response: requests.Response) -> Iterator[StreamEvent]:
        resumed_from = self.timepoint
        for line in complete_lines(body_chunks(response)):
            if self.stopped:
                return
            if line.strip() == HEARTBEAT:
                continue
            event = StreamEvent.parse(line)
            if event.timepoint is not None:
                if resumed_from is not None and event.timepoint <= resumed_from:
                    continue  # already yielded before the reconnect
                self.timepoint = event.timepoint
            self.backoff.reset()
            yield event

    def _handle_error_status(self, response: requests.Response) -> None:
        status = response.status_code
        if status == 401:
            problem = "rejected the API key" if self.api_key else "requires an API key and CH_STREAM_API_KEY is not set"
            raise StreamAuthError(
                f"{self.url} {problem} (401): set CH_STREAM_API_KEY to a *streaming* API key "
                "(REST API keys do not work) from https://developer.company-information.service.gov.uk/manage-applications"
            )
        if status == 416:
            self._handle_expired_timepoint()
            return
        if status in RETRIED_STATUSES:
            self._wait(f"HTTP {status} from {self.url}: {_snippet(response)}", _retry_after(response))
            return
        raise StreamError(f"unexpected HTTP {status} from {self.url}: {_snippet(response)}; check CH_STREAM_URL")

    def _handle_expired_timepoint(self) -> None:
        if not self.restart_from_now_if_expired:
            raise TimepointExpired(
                f"timepoint {self.timepoint} is too old for {self.url} (416: about 3 days are kept), so events were "
                "missed. Restart from now (delete the checkpoint file CH_CHECKPOINT_PATH, or run "
                "`ch-pipeline produce --restart-from-now-if-expired`) and reload the bulk snapshot "
                "(materialize company_house_bulk) to fill the gap."
            )
        log.warning(
            "timepoint %s is too old (416): restarting from now; events in the gap are missing "
            "until the bulk snapshot is reloaded",
            self.timepoint,
        )
        self.timepoint = None

    def _wait(self, reason: str, at_least: float = 0.0) -> None:
        delay = self.backoff.next_delay(at_least)
        log.warning("%s; reconnecting in %.2fs", reason, delay)
        self._stop.wait(delay)


def body_chunks(response: requests.Response) -> Iterator[bytes]:
    """The body's bytes as they arrive, never waiting to fill a buffer on an endless stream.

    A chunked body (the API's) is read chunk by chunk; a body without chunked encoding (a proxy
    may strip it) is read with ``read1``, which returns what has arrived instead of blocking for more.
    """
    if response.raw.chunked:
        yield from response.iter_content(chunk_size=None)
        return
    while chunk := response.raw.read1(65536, decode_content=True):
        yield chunk


def complete_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Reassemble lines from chunks that do not align with them.

    A last line without its newline when the stream ends was cut by the disconnect: it is not
    yielded (the reconnect resumes before it), so a truncated event is never taken as received.
    """
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from lines
    if pending:
        log.warning("discarded a truncated line of %d bytes at disconnect", len(pending))


def _retry_after(response: requests.Response) -> float:
    try:
        return float(response.headers.get("Retry-After", 0))
    except ValueError:
        return 0.0  # an HTTP date: fall back to our own backoff


def _snippet(response: requests.Response, limit: int = 120) -> str:
    """A short one-line excerpt of an error body, which may be an HTML page rather than JSON."""
    try:
        text = response.raw.read(4096, decode_content=True).decode("utf-8", "replace")
    except Exception:  # the body is only for the log line: never fail on it
        return "(no body)"
    return " ".join(text.split())[:limit] or "(empty body)"
