"""What each stream's checks watch (issue 15, docs/architecture.md "Stream watches"): the replay
window and the lag, next to the completeness check (``timepoints_contiguous``, ``defs.streams``).

The producer runs outside Dagster and checkpoints a timepoint only once Kafka has confirmed every
event up to it, so the newest message of a stream's topic is the producer's resume point (give or
take the last second's checkpoint). Its ``published_at`` says two things:

- Companies House -> Kafka lag: now - ``published_at`` (``source_lag_seconds``);
- the replay window: a producer restarted now resumes from that event's timepoint, which the API
  refuses (416) once it is older than its retention (``CH_STREAM_RETENTION_HOURS``, "about 3
  days"): ``replay_window_remaining_hours``, and the ``replay_window`` check warns when less than
  a third of the window is left.

Both come from the Kafka sensor's offset probe, which already reads each partition's last record
batch to find the true end offset (``kafka.offsets.probe_topic``): the watch adds no round trip,
only the JSON of one message per partition. The sensor reports them as an ``AssetObservation`` and
an ``AssetCheckEvaluation`` on the topic asset (``SensorResult.asset_events``), at most once per
``WATCH_INTERVAL_SECONDS``: runless events are never pruned by the history retention, and a point
every 5 minutes plots the lag well enough.

Kafka -> warehouse lag is measured by each landing run after it commits (``landing_lag_metadata``):
the messages still behind its last offsets, and how long its newest message waited in Kafka.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import dagster as dg

from ch_pipeline.companies_house.streams import StreamSpec
from ch_pipeline.defs.resources import KafkaResource
from ch_pipeline.kafka.offsets import OffsetRange, TopicProbe, probe_topic

REPLAY_WINDOW_CHECK = "replay_window"
# Warn with a third of the window left: a day of a 3-day window, time to restart a stopped producer
# (or plan a bulk backfill) before the API answers 416.
WARN_FRACTION = 1 / 3
WATCH_INTERVAL_SECONDS = 300


def topic_asset_key(stream: StreamSpec) -> dg.AssetKey:
    """The external asset of a stream's Kafka topic (``company_house_topic``, ``company_house_officers_topic``)."""
    return dg.AssetKey(f"{stream.default_topic}_topic")


def published_at_of(value: bytes | None) -> datetime | None:
    """``event.published_at`` of a message (a flat tutorial record's ``published_at``), UTC when it
    has no offset; None when the message is not such JSON (the landing rejects it, not the watch)."""
    try:
        message = json.loads(value)
        event = message.get("event")
        published = datetime.fromisoformat((event if isinstance(event, dict) else message)["published_at"])
    except (ValueError, TypeError, AttributeError, KeyError):
        return None
    return published if published.tzinfo else published.replace(tzinfo=timezone.utc)


def _from_ms(timestamp_ms: int | None) -> datetime | None:
    try:
        return None if timestamp_ms is None else datetime.fromtimestamp(timestamp_ms / 1000, timezone.utc)
    except (OverflowError, OSError, ValueError):  # a producer's clock is not ours to fail the tick on
        return None


@dataclass(frozen=True)
class TopicWatch:
    """A stream's topic as the watches see it at ``checked_at``."""

    checked_at: datetime
    retention_hours: int  # 0: no time-based retention, ages only
    ends: Mapping[int, int]  # Kafka end offset per partition
    newest_published_at: datetime | None  # of the newest event in the topic (None: none yet)
    newest_in_kafka_at: datetime | None  # its Kafka timestamp: when the producer last wrote

    @property
    def source_lag_seconds(self) -> float | None:
        if self.newest_published_at is None:
            return None
        return (self.checked_at - self.newest_published_at).total_seconds()

    @property
    def expires_at(self) -> datetime | None:
        """When the producer's checkpoint leaves the API's replay window (its restart would get 416)."""
        if self.newest_published_at is None or not self.retention_hours:
            return None
        return self.newest_published_at + timedelta(hours=self.retention_hours)

    @property
    def replay_window_remaining_hours(self) -> float | None:
        expires = self.expires_at
        return None if expires is None else (expires - self.checked_at).total_seconds() / 3600


def watch_topic(probe: TopicProbe, retention_hours: int, now: datetime | None = None) -> TopicWatch:
    published = [p for p in (published_at_of(m.value) for m in probe.newest.values()) if p is not None]
    in_kafka = [t for t in (_from_ms(m.timestamp_ms) for m in probe.newest.values()) if t is not None]
    return TopicWatch(
        checked_at=now or datetime.now(timezone.utc),
        retention_hours=retention_hours,
        ends=dict(probe.ends),
        newest_published_at=max(published, default=None),
        newest_in_kafka_at=max(in_kafka, default=None),
    )


def watch_metadata(watch: TopicWatch) -> dict[str, dg.MetadataValue]:
    """Numbers the asset page plots over time (floats and ints), and the timestamps behind them."""
    metadata: dict[str, dg.MetadataValue] = {
        "kafka_end_offsets": dg.MetadataValue.json({f"p{p}": end for p, end in sorted(watch.ends.items())}),
        "kafka_end_offset_total": dg.MetadataValue.int(sum(watch.ends.values())),
        "retention_hours": dg.MetadataValue.int(watch.retention_hours),
    }
    if watch.newest_published_at is not None:
        metadata["newest_published_at"] = dg.MetadataValue.timestamp(watch.newest_published_at)
        metadata["source_lag_seconds"] = dg.MetadataValue.float(round(watch.source_lag_seconds, 3))
    if watch.newest_in_kafka_at is not None:
        metadata["newest_in_kafka_at"] = dg.MetadataValue.timestamp(watch.newest_in_kafka_at)
    if watch.replay_window_remaining_hours is not None:
        metadata["replay_window_remaining_hours"] = dg.MetadataValue.float(round(watch.replay_window_remaining_hours, 3))
    return metadata


def topic_observation(stream: StreamSpec, watch: TopicWatch) -> dg.AssetObservation:
    return dg.AssetObservation(asset_key=topic_asset_key(stream), metadata=watch_metadata(watch))


@dataclass(frozen=True)
class ReplayWindowVerdict:
    passed: bool
    severity: dg.AssetCheckSeverity
    description: str


def replay_window_verdict(watch: TopicWatch) -> ReplayWindowVerdict:
    """Pass while more than ``WARN_FRACTION`` of the window is left; then WARN; past it, ERROR."""
    ok = dg.AssetCheckSeverity.WARN
    if watch.newest_published_at is None:
        return ReplayWindowVerdict(True, ok, "no event with a published_at in the topic yet: no checkpoint to age")
    age = f"the newest event was published {watch.source_lag_seconds / 3600:.1f} h ago ({watch.newest_published_at:%Y-%m-%d %H:%M:%S}Z)"
    remaining = watch.replay_window_remaining_hours
    if remaining is None:
        return ReplayWindowVerdict(True, ok, f"{age}; no time-based retention set (CH_STREAM_RETENTION_HOURS=0)")
    expiry = f"the producer's checkpoint leaves the {watch.retention_hours} h replay window at {watch.expires_at:%Y-%m-%d %H:%M}Z"
    if remaining <= 0:
        return ReplayWindowVerdict(
            False, dg.AssetCheckSeverity.ERROR,
            f"{age}: {expiry}, so a producer (re)started now gets 416; restart it with "
            "--restart-from-now-if-expired (the events in between are missed: for companies the next monthly bulk file brings them)",
        )  # fmt: skip
    if remaining < watch.retention_hours * WARN_FRACTION:
        return ReplayWindowVerdict(
            False, dg.AssetCheckSeverity.WARN,
            f"{remaining:.1f} h left: {age}, and {expiry}; is the producer running and keeping up?",
        )  # fmt: skip
    return ReplayWindowVerdict(True, ok, f"{remaining:.1f} h left: {age}")


def replay_window_evaluation(stream: StreamSpec, watch: TopicWatch) -> dg.AssetCheckEvaluation:
    verdict = replay_window_verdict(watch)
    return dg.AssetCheckEvaluation(
        asset_key=topic_asset_key(stream),
        check_name=REPLAY_WINDOW_CHECK,
        passed=verdict.passed,
        severity=verdict.severity,
        description=verdict.description,
        metadata=watch_metadata(watch),
    )


def watch_events(stream: StreamSpec, probe: TopicProbe, retention_hours: int) -> list:
    """The sensor's report on ``stream``'s topic: the observation and the replay-window check."""
    watch = watch_topic(probe, retention_hours)
    return [topic_observation(stream, watch), replay_window_evaluation(stream, watch)]


def watch_due(last_tick_at: float | None, interval_seconds: float, now: float | None = None) -> bool:
    """Whether this tick reports the watches: the first tick, then the first in each interval.

    Stateless (no cursor field), from the time of the previous tick: a point per interval whatever
    the sensor's own interval, and a restarted daemon reports at once."""
    if last_tick_at is None or interval_seconds <= 0:
        return True
    now = time.time() if now is None else now
    return now // interval_seconds != last_tick_at // interval_seconds


def replay_window_check(stream: StreamSpec, retention_hours: int, timeout: float) -> dg.AssetChecksDefinition:
    """The topic's ``replay_window`` check. The Kafka sensor reports it every ``WATCH_INTERVAL_SECONDS``;
    executing it from the UI measures it now, the same way."""
    @dg.asset_check(
        asset=topic_asset_key(stream),
        name=REPLAY_WINDOW_CHECK,
        description=f"The producer's checkpoint (the newest event in the topic) against the API's {retention_hours or 'unset'} h "
        f"replay window: warns with less than a third left, fails once a restart would get 416. Reported by the Kafka sensor.",
    )
    def replay_window(kafka: KafkaResource) -> dg.AssetCheckResult:
        watch = watch_topic(probe_topic(kafka.client_config(), kafka.topic_of(stream.name), timeout), retention_hours)
        verdict = replay_window_verdict(watch)
        return dg.AssetCheckResult(
            passed=verdict.passed, severity=verdict.severity, description=verdict.description, metadata=watch_metadata(watch)
        )

    return replay_window


def landing_lag_metadata(
    ranges: Sequence[OffsetRange], ends: Mapping[int, int], newest: datetime | None, now: datetime | None = None
) -> dict[str, dg.MetadataValue]:
    """Kafka -> warehouse lag, just after a landing committed: ``kafka_messages_behind`` (messages
    after its last offsets in the partitions it landed) and ``kafka_to_warehouse_seconds`` (how long
    its newest message, Kafka timestamp ``newest`` (aware), had been in Kafka)."""
    behind = sum(max(0, ends.get(r.partition, r.next_offset) - r.next_offset) for r in ranges)
    metadata: dict[str, dg.MetadataValue] = {"kafka_messages_behind": dg.MetadataValue.int(behind)}
    if newest is not None:  # aware (LandingSummary)
        waited = ((now or datetime.now(timezone.utc)) - newest).total_seconds()
        metadata["kafka_to_warehouse_seconds"] = dg.MetadataValue.float(round(waited, 3))
    return metadata

