"""``ch-pipeline produce``: Companies House stream -> Kafka, resumable and exact (docs/architecture.md §4).

Each event line goes to the topic unmodified (value), keyed by company number (for a stream whose
items are not under a company, the catalogue's key: ``streams.kafka_key_of``), with a ``timepoint``
header. ``--stream`` follows one stream of the catalogue into its own topic, with its own checkpoint.
The producer is idempotent with ``acks=all`` (no duplicates from librdkafka's own retries,
per-partition order kept). The checkpoint holds the last timepoint up to which every event has a
successful delivery report; a restart resumes there, so a crash re-sends at most the events after
the checkpoint (same bytes, same timepoint: downstream dedupes on the timepoint).

An event Kafka refuses for good (over ``message.max.bytes``, or rejected by the broker as too large
or invalid) never stops the producer: it goes to the dead-letter file (NDJSON next to the
checkpoint, exact bytes in base64, fsynced), is logged as a warning and counted, and the checkpoint
moves past it. Transient errors (broker down, timeouts) are not refusals: they pin the checkpoint.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import click
from confluent_kafka import KafkaError, KafkaException, Producer

from ch_pipeline.companies_house.stream_client import CompaniesHouseStream, StreamError, StreamEvent
from ch_pipeline.companies_house.streams import COMPANIES, STREAM_NAMES, kafka_key_of, stream
from ch_pipeline.kafka.checkpoint import CheckpointError, DeliveryTracker, read_checkpoint, write_checkpoint

log = logging.getLogger(__name__)

# Guarantees, not tuning: never duplicated by retries, written to all in-sync replicas.
PRODUCER_GUARANTEES = {"enable.idempotence": True, "acks": "all"}
TIMEPOINT_HEADER = "timepoint"
_QUEUE_SIZE = 10_000
_FLUSH_TIMEOUT = 60.0
# Errors that refuse this one message whatever we do (too large for the client or the topic, or
# invalid for the broker): retrying cannot help and would stop the stream at it forever.
# MSG_SIZE_TOO_LARGE is also the Java client's RecordTooLargeException.
UNPRODUCIBLE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_RECORD})


class ProducerError(RuntimeError):
    """The producer cannot run or lost deliveries; the message says what to do."""


@dataclass
class ProduceResult:
    produced: int
    delivered: int
    delivery_errors: int
    checkpoint: int | None
    dead_lettered: int = 0


@dataclass
class StreamProducer:
    """Moves events from ``stream`` to ``topic`` until ``stop`` is set, ``max_events`` are delivered,
    or the stream fails; then flushes and writes the final checkpoint.

    ``dead_letter_path``: where refused events go; default: next to the checkpoint,
    ``producer.checkpoint`` -> ``producer.dead-letter.ndjson``.
    """

    stream: CompaniesHouseStream
    kafka_config: Mapping[str, str]
    topic: str
    checkpoint_path: Path
    max_events: int | None = None
    log_interval: float = 10.0
    checkpoint_interval: float = 1.0
    dead_letter_path: Path | None = None
    stream_name: str = COMPANIES  # which catalogue stream ``stream`` follows: decides the Kafka key
    topic_env: str = "KAFKA_TOPIC"  # named when the topic is missing
    _last_checkpoint_at: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if self.dead_letter_path is None:
            self.dead_letter_path = Path(self.checkpoint_path).with_suffix(".dead-letter.ndjson")

    def run(self, stop: threading.Event) -> ProduceResult:
        producer = Producer({**self.kafka_config, **PRODUCER_GUARANTEES})
        require_topic(producer, self.topic, self.topic_env)
        tracker = DeliveryTracker(self.stream.timepoint)
        events: queue.Queue = queue.Queue(maxsize=_QUEUE_SIZE)
        reader = threading.Thread(target=_read_stream, args=(self.stream, events), name="stream-reader", daemon=True)
        reader.start()
        progress = _Progress(self.log_interval)
        checkpointed = tracker.safe_timepoint
        stream_error: BaseException | None = None
        produced = 0
        try:
            while not stop.is_set() and (self.max_events is None or produced < self.max_events) and not tracker.failed:
                try:
                    item = events.get(timeout=0.2)
                except queue.Empty:
                    item = None
                if isinstance(item, BaseException):
                    stream_error = item
                    break
                if item is not None:
                    self._produce(producer, item, tracker)
                    produced += 1
                producer.poll(0)
                self._dead_letter_refused(tracker)
                checkpointed = self._checkpoint_if_due(tracker, checkpointed)
                progress.maybe_log(produced, tracker)
        finally:
            self.stream.stop()
            remaining = producer.flush(_FLUSH_TIMEOUT)
            try:
                self._dead_letter_refused(tracker)
            finally:  # if that failed (disk full), the refused events still pin the checkpoint
                if tracker.safe_timepoint is not None and tracker.safe_timepoint != checkpointed:
                    write_checkpoint(self.checkpoint_path, tracker.safe_timepoint, self.stream.url)
                progress.log(produced, tracker, final=True)
        if stream_error is not None:
            raise stream_error
        if tracker.failed or remaining:
            raise ProducerError(
                f"{tracker.failed} deliveries failed and {remaining} were unconfirmed after {_FLUSH_TIMEOUT:.0f}s "
                f"(see the errors above): the checkpoint stays at timepoint {tracker.safe_timepoint}, and a restart "
                "re-sends everything after it. Check that Kafka is reachable and the credentials are valid."
            )
        return ProduceResult(produced, tracker.delivered, tracker.failed, tracker.safe_timepoint, tracker.dead_lettered)

    def _produce(self, producer: Producer, event: StreamEvent, tracker: DeliveryTracker) -> None:
        entry = tracker.sent(event.timepoint)
        headers = [(TIMEPOINT_HEADER, str(event.timepoint).encode())] if event.timepoint is not None else None
        key_text = event.company_number if self.stream_name == COMPANIES else self._catalogue_key(event)
        key = key_text.encode() if key_text else None
        while True:
            try:
                producer.produce(
                    self.topic,
                    key=key,
                    value=event.raw,
                    headers=headers,
                    on_delivery=functools.partial(_on_delivery, tracker, entry),
                )
                return
            except BufferError:
                producer.poll(0.5)  # librdkafka's local queue is full: wait for deliveries to drain it
            except KafkaException as exc:
                if exc.args[0].code() not in UNPRODUCIBLE:
                    raise
                # Refused before it was queued (librdkafka's text says "Broker:" but the limit is the
                # client's message.max.bytes): same path as a refusal in the delivery report.
                limit = self.kafka_config.get("message.max.bytes", "1000000 (default)")
                tracker.on_refused(entry, _reason(exc.args[0], f"at produce(), client message.max.bytes {limit}"), key, event.raw)
                return

    def _catalogue_key(self, event: StreamEvent) -> str | None:
        return kafka_key_of(stream(self.stream_name), event.envelope) if event.envelope is not None else None

    def _dead_letter_refused(self, tracker: DeliveryTracker) -> None:
        """Write the refused events to the dead-letter file; only then may the checkpoint pass them."""
        for entry, reason, key, value in tracker.take_refused():
            record = {
                "timepoint": entry.timepoint,
                "company_number": key.decode() if key is not None else None,  # the Kafka key
                "topic": self.topic,
                "size": len(value),
                "reason": reason,
                "raw_value_base64": base64.b64encode(value).decode(),
            }
            append_dead_letter(self.dead_letter_path, record)
            log.warning(
                "timepoint %s (%d bytes, company %s) cannot be produced: %s; written to %s and skipped",
                entry.timepoint, len(value), record["company_number"], reason, self.dead_letter_path,
            )  # fmt: skip
            tracker.on_dead_lettered(entry)

    def _checkpoint_if_due(self, tracker: DeliveryTracker, checkpointed: int | None) -> int | None:
        # At most once per interval: an fsync per event would cap throughput; a crash re-sends
        # at most one interval of events.
        now = time.monotonic()
        if tracker.safe_timepoint == checkpointed or now - self._last_checkpoint_at < self.checkpoint_interval:
            return checkpointed
        write_checkpoint(self.checkpoint_path, tracker.safe_timepoint, self.stream.url)
        self._last_checkpoint_at = now
        return tracker.safe_timepoint


def _on_delivery(tracker: DeliveryTracker, entry, err, msg) -> None:
    if err is None:
        tracker.on_delivered(entry)
    elif err.code() in UNPRODUCIBLE:
        tracker.on_refused(entry, _reason(err, "in the delivery report"), msg.key(), msg.value())
    else:
        log.error("delivery failed for timepoint %s: %s", entry.timepoint, err)
        tracker.on_failed(entry)


def _reason(err: KafkaError, where: str) -> str:
    return f"{err.name()} {where}: {err.str()}"


def append_dead_letter(path: Path, record: dict) -> None:
    """Append one NDJSON line and fsync it before returning: the checkpoint passes the event next."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record).encode() + b"\n"
    created = not path.exists()
    with path.open("a+b") as out:
        end = out.seek(0, os.SEEK_END)
        if end:
            out.seek(end - 1)
            if out.read(1) != b"\n":
                line = b"\n" + line  # a crash tore the last record (its event is re-sent): start a new line
        out.write(line)
        out.flush()
        os.fsync(out.fileno())
    if created:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # make the new file's name durable too
        finally:
            os.close(directory)


def _read_stream(stream: CompaniesHouseStream, events: queue.Queue) -> None:
    """Reader thread: stream events into the bounded queue (back-pressure when Kafka is slow)."""
    try:
        for event in stream.events():
            while not stream.stopped:
                try:
                    events.put(event, timeout=0.2)
                    break
                except queue.Full:
                    continue
    except BaseException as exc:  # handed to the main thread, which flushes, checkpoints and re-raises
        events.put(exc)


def require_topic(producer: Producer, topic: str, topic_env: str = "KAFKA_TOPIC") -> None:
    """Fail early and clearly when the topic is missing: we never rely on auto-creation."""
    try:
        metadata = producer.list_topics(timeout=15)
    except KafkaException as exc:
        raise ProducerError(f"cannot reach Kafka to check topic {topic!r}: {exc}; check KAFKA_BOOTSTRAP_SERVERS / KAFKA_CONFIG_FILE") from exc
    if topic not in metadata.topics:
        raise ProducerError(
            f"Kafka topic {topic!r} does not exist: create it first (locally `ch-pipeline broker --topic {topic}`, "
            f"on Confluent Cloud in the console or with `confluent kafka topic create`), or set {topic_env}"
        )


class _Progress:
    """A log line every ``interval`` seconds: rate, totals, last timepoint, delivery errors, dead letters."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.started = self.last_time = time.monotonic()
        self.last_count = 0

    def maybe_log(self, produced: int, tracker: DeliveryTracker) -> None:
        if time.monotonic() - self.last_time >= self.interval:
            self.log(produced, tracker)

    def log(self, produced: int, tracker: DeliveryTracker, final: bool = False) -> None:
        now = time.monotonic()
        since, count = (self.started, 0) if final else (self.last_time, self.last_count)  # final: the whole run
        rate = (tracker.delivered - count) / max(now - since, 1e-9)
        log.info(
            "%.1f events/s, %d delivered (%d produced, %d in flight), last delivered timepoint %s, %d delivery errors, "
            "%d dead-lettered",
            rate, tracker.delivered, produced, tracker.in_flight, tracker.safe_timepoint, tracker.failed,
            tracker.dead_lettered,
        )  # fmt: skip
        self.last_time, self.last_count = now, tracker.delivered


@click.command("produce")
@click.option("--stream", "stream_name", default=COMPANIES, show_default=True, type=click.Choice(STREAM_NAMES),
              help="The Companies House stream to follow, into its own topic with its own checkpoint.")
@click.option("--max-events", type=int, default=None, help="Stop after this many delivered events (demos, tests).")
@click.option("--restart-from-now-if-expired", is_flag=True, help="On 416 (checkpoint too old) restart from now instead of stopping.")
@click.option("--log-interval", default=10.0, show_default=True, help="Seconds between progress log lines.")
def produce_command(stream_name: str, max_events: int | None, restart_from_now_if_expired: bool, log_interval: float) -> None:
    """Stream Companies House events (CH_STREAM_URL) into Kafka (KAFKA_TOPIC), resuming from CH_CHECKPOINT_PATH.

    ``--stream officers`` (etc.): CH_STREAM_URL_OFFICERS, KAFKA_TOPIC_OFFICERS, CH_CHECKPOINT_PATH_OFFICERS,
    by default the officers path on CH_STREAM_URL's host, topic company_house_officers, producer-officers.checkpoint.

    SIGTERM / Ctrl-C: stop reading, flush, checkpoint, exit 0.
    """
    from ch_pipeline.processes import stop_requested
    from ch_pipeline.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    target = settings.stream_settings(stream_name)
    try:
        checkpoint = read_checkpoint(target.checkpoint_path, target.url)
        kafka_config = settings.kafka_client_config()
    except (CheckpointError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    log.info("resuming %s from %s", target.url, f"timepoint {checkpoint}" if checkpoint is not None else "now (no checkpoint)")
    # One key, one connection per producer: several producers stay within the key's ~10 open streams.
    source = CompaniesHouseStream(target.url, settings.stream_api_key, checkpoint, restart_from_now_if_expired=restart_from_now_if_expired)
    producer = StreamProducer(source, kafka_config, target.topic, target.checkpoint_path, max_events, log_interval,
                              stream_name=stream_name, topic_env=target.topic_env)  # fmt: skip
    with stop_requested() as stop:
        try:
            result = producer.run(stop)
        except (StreamError, ProducerError) as exc:
            raise click.ClickException(str(exc)) from exc
    done = f"delivered {result.delivered} events to {target.topic}; checkpoint at timepoint {result.checkpoint}"
    dead = f"; {result.dead_lettered} refused by Kafka, in {producer.dead_letter_path}" if result.dead_lettered else ""
    click.echo(done + dead)
