"""A resumable client for the Companies House streaming API (docs/architecture.md §3).

``CompaniesHouseStream(url, api_key, timepoint).events()`` yields every event line once, in stream
order, across reconnects: it resumes each new connection from the last timepoint it yielded.

API facts it is built on (developer-specs.company-information.service.gov.uk/streaming-api):
basic auth with the stream key as user and an empty password; NDJSON whose chunks do not align
with lines; blank lines are heartbeats; ``?timepoint=N`` resumes; 401 = key rejected, 416 =
timepoint invalid or too old (about 3 days are kept), 429 = rate limited; 5xx and dropped
connections happen in practice.

What the server sends is bounded before it is trusted (issue 19): a line over ``MAX_LINE_BYTES`` is
dropped with a warning without being buffered, JSON nested past the interpreter's recursion limit is
a line that is not JSON, and ``Retry-After`` is honoured only as a finite wait up to ``MAX_RETRY_AFTER``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import requests
import tenacity
import urllib3

from ch_pipeline.companies_house.bulk_csv import gap_remedy
from ch_pipeline.companies_house.events import company_number_of

log = logging.getLogger(__name__)

HEARTBEAT = b""
# Real events are a few KB. 4 MiB leaves three orders of magnitude of headroom and stays above
# librdkafka's 1 MB message.max.bytes default, so an event Kafka could take when that is raised
# reaches the producer (which dead-letters what it cannot send); only absurd lines are dropped here.
MAX_LINE_BYTES = 4 << 20
# Bytes asked of the socket per read: bounds each chunk (also after gzip decoding) on any body.
READ_SIZE = 64 << 10
# The longest server-requested wait we honour: long enough for a rate-limit window, short enough
# that a hostile or broken header cannot park the producer for hours.
MAX_RETRY_AFTER = 300.0


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
        except (ValueError, RecursionError):  # nesting past the recursion limit is not JSON we can use
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

    The wait is drawn from [delay/2, delay] so that many clients do not reconnect in lockstep:
    tenacity's fixed exponential wait for the first half plus its random ("full jitter") exponential
    wait for the second. ``at_least`` (the server's Retry-After, already clamped by
    ``retry_after_seconds``) can make it longer than ``cap``: the server knows its rate-limit window
    better than our cap does.
    """

    initial: float = 1.0
    cap: float = 60.0
    attempt: int = 0
    _wait: tenacity.wait.wait_base = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        half = {"multiplier": self.initial / 2, "max": self.cap / 2}
        self._wait = tenacity.wait_exponential(**half) + tenacity.wait_random_exponential(**half)

    def next_delay(self, at_least: float = 0.0) -> float:
        self.attempt += 1
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
        state.attempt_number = self.attempt
        jittered = self._wait(state)
        # max() with NaN returns NaN and Event.wait(NaN) does not wait: no floor unless finite.
        return max(at_least, jittered) if math.isfinite(at_least) else jittered

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
        for line in complete_lines(body_chunks(response), on_overlong=self._warn_overlong):
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

    def _warn_overlong(self, length: int) -> None:
        log.warning(
            "dropped an event line of %d bytes, over the %d-byte limit, after timepoint %s; "
            "continuing with the next line",
            length, MAX_LINE_BYTES, self.timepoint,
        )  # fmt: skip

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
                "`ch-pipeline produce --restart-from-now-if-expired`). " + gap_remedy()
            )
        log.warning("timepoint %s is too old (416): restarting from now. %s", self.timepoint, gap_remedy())
        self.timepoint = None

    def _wait(self, reason: str, at_least: float = 0.0) -> None:
        delay = self.backoff.next_delay(at_least)
        log.warning("%s; reconnecting in %.2fs", reason, delay)
        self._stop.wait(delay)


def body_chunks(response: requests.Response) -> Iterator[bytes]:
    """The body's bytes as they arrive, never waiting to fill a buffer on an endless stream.

    A chunked body (the API's) is read chunk by chunk, a long chunk in ``READ_SIZE`` pieces (so one
    huge chunk is never held whole); a body without chunked encoding (a proxy may strip it) is read
    with ``read1``, which returns what has arrived instead of blocking for more.
    """
    if response.raw.chunked:
        yield from response.iter_content(chunk_size=READ_SIZE)
        return
    while chunk := response.raw.read1(READ_SIZE, decode_content=True):
        yield chunk


def _log_overlong(length: int) -> None:
    log.warning("dropped a line of %d bytes, over the %d-byte limit", length, MAX_LINE_BYTES)


def complete_lines(
    chunks: Iterator[bytes],
    max_line_bytes: int = MAX_LINE_BYTES,
    on_overlong: Callable[[int], None] = _log_overlong,
) -> Iterator[bytes]:
    """Reassemble lines from chunks that do not align with them, in time and memory linear in the input.

    Only the new chunk is split, and the partial line grows in place: re-joining it with every
    chunk would copy it again each time (quadratic). A line over ``max_line_bytes`` is not
    yielded: as soon as it is known to be too long its bytes are counted, not kept, up to its
    newline; then ``on_overlong(length)`` is called and the next line is read as usual.

    A last line without its newline when the stream ends was cut by the disconnect: it is not
    yielded (the reconnect resumes before it), so a truncated event is never taken as received.
    """
    pending = bytearray()  # the start of the current line, never more than max_line_bytes
    skipped = 0  # bytes of the current line counted and dropped: it is over the limit
    for chunk in chunks:
        *ends, tail = chunk.split(b"\n")
        for end in ends:  # only the first can continue the pending line; the rest start empty
            length = skipped + len(pending) + len(end)
            if length > max_line_bytes:
                on_overlong(length)
            else:
                yield b"".join((pending, end)) if pending else end
            pending, skipped = bytearray(), 0
        if skipped or len(pending) + len(tail) > max_line_bytes:
            skipped += len(pending) + len(tail)
            pending = bytearray()
        else:
            pending += tail
    if pending or skipped:
        log.warning("discarded a truncated line of %d bytes at disconnect", skipped + len(pending))


def _retry_after(response: requests.Response) -> float:
    seconds = retry_after_seconds(response.headers.get("Retry-After"))
    return 0.0 if seconds is None else seconds  # 0: our own backoff decides


# RFC 9110 delay-seconds is digits only; a fraction is tolerated. float() alone would also take
# "nan", "inf", "-5" and "1e9", which is how a header once disabled the backoff.
_DELAY_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")  # not \d: it also matches non-ASCII digits


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """The wait a ``Retry-After`` header asks for, clamped to ``[0, MAX_RETRY_AFTER]``.

    Accepts delay-seconds and an HTTP-date (a date in the past means now); ``None`` for a missing
    or unusable value, so that the caller falls back to its normal backoff.
    """
    value = (value or "").strip()
    if _DELAY_SECONDS.fullmatch(value):
        seconds = float(value)  # a huge digit string is inf here, and clamped below
    else:
        seconds = _seconds_until_http_date(value, now or datetime.now(timezone.utc))
        if seconds is None:
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _seconds_until_http_date(value: str, now: datetime) -> float | None:
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):  # which one depends on how it is not a date
        return None
    if when.tzinfo is None:  # "-0000": UTC without a claim about the local zone (RFC 5322)
        when = when.replace(tzinfo=timezone.utc)
    return (when - now).total_seconds()


def _snippet(response: requests.Response, limit: int = 120) -> str:
    """A short one-line excerpt of an error body, which may be an HTML page rather than JSON."""
    try:
        text = response.raw.read(4096, decode_content=True).decode("utf-8", "replace")
    except Exception:  # the body is only for the log line: never fail on it
        return "(no body)"
    return " ".join(text.split())[:limit] or "(empty body)"

