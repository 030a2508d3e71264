"""Resume ``ch-pipeline run`` exactly although the local broker forgot its log.

The local broker keeps topics in memory: after a restart the topic is empty, while the warehouse
and the Dagster instance still name offsets of the old log. Re-producing the replay history does
not rebuild that log (a producer crash re-sends events, which shifts every later offset). What is
known to be true is what landed: ``company_house_stream`` and ``company_house_stream_rejects`` hold
every landed message's bytes and Kafka coordinates (each other stream's ``spec.landing_table`` and
``spec.rejects_table`` likewise). So a restart, for each stream the run follows:

1. produces the landed messages back, partition by partition, at the very same offsets, and refuses
   to start on any gap or mismatch (messages that existed only in the old broker cannot be guessed);
2. resumes the producer from the last timepoint that every Kafka partition has landed up to. The
   events after it come again from the stream; an event that also landed before now has a copy at a
   higher offset of the same Kafka partition (one company, one partition), and the copies come in
   timepoint order after every original, so the core's newest-event rule gives the same result;
3. points the Dagster instance at the restored log (``reset_instance``): the Kafka sensor's cursor at
   the restored ends, stream partitions that never landed dropped (their offsets will hold other
   messages), and runs the stopped stack left in flight failed, so that run retries re-run them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ch_pipeline.companies_house.streams import COMPANIES, STREAMS, StreamSpec, kafka_key_of

COMPANIES_STREAM = STREAMS[COMPANIES]


class RestoreRefused(RuntimeError):
    """The landed rows do not describe the old log completely; the message says what to do."""


@dataclass(frozen=True)
class LandedMessage:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None
    timepoint: int | None


@dataclass(frozen=True)
class Restored:
    ends: dict[int, int]  # next offset per Kafka partition after the restore
    resume_timepoint: int | None  # None: the producer starts from the first event


def landed_messages(duckdb_path: Path, spec: StreamSpec = COMPANIES_STREAM) -> dict[int, list[LandedMessage]]:
    """Every landed message of the stream's tables, per Kafka partition, in offset order."""
    import duckdb

    if not duckdb_path.exists():
        return {}
    with duckdb.connect(str(duckdb_path), read_only=True) as con:
        tables = {row[0] for row in con.execute("select table_name from information_schema.tables").fetchall()}
        if spec.landing_table not in tables:
            return {}
        rows = con.execute(
            f"select kafka_partition, kafka_offset, company_number, raw_event, epoch_ms(kafka_timestamp), timepoint, "
            f"null as key_b64, null as value_b64, false as rejected from {spec.landing_table} "
            f"union all select kafka_partition, kafka_offset, null, null, epoch_ms(kafka_timestamp), null, "
            f"kafka_key, raw_value_base64, true from {spec.rejects_table} order by 1, 2"
        ).fetchall()  # fmt: skip
    by_partition: dict[int, list[LandedMessage]] = {}
    for partition, offset, number, raw, timestamp_ms, timepoint, key_b64, value_b64, rejected in rows:
        if rejected:
            key, value = _b64(key_b64), _b64(value_b64)
        else:
            value = raw.encode() if raw is not None else None
            key = _producer_key(spec, value) or (number.encode() if number else None)
        by_partition.setdefault(partition, []).append(LandedMessage(partition, offset, key, value, timestamp_ms, timepoint))
    return by_partition


def _b64(text: str | None) -> bytes | None:
    return base64.b64decode(text) if text is not None else None


def _producer_key(spec: StreamSpec, value: bytes | None) -> bytes | None:
    """The key ``ch-pipeline produce`` gave this event (derived from its bytes, the same way)."""
    from ch_pipeline.companies_house.stream_client import StreamEvent

    if value is None:
        return None
    try:
        key = StreamEvent.parse(value).company_number if spec.name == COMPANIES else kafka_key_of(spec, json.loads(value))
    except Exception:  # noqa: BLE001 (a flat tutorial record: not ours, keyed by its company number)
        return None
    return key.encode() if key else None


def check_complete(messages: Mapping[int, list[LandedMessage]]) -> dict[int, int]:
    """The end of each partition's landed log; refuses when an offset is missing below it."""
    ends = {}
    for partition, landed in sorted(messages.items()):
        for expected, message in enumerate(landed):
            if message.offset != expected:
                raise RestoreRefused(
                    f"Kafka partition {partition}: offsets {expected}-{message.offset - 1} were never landed while later "
                    "ones were. Their messages existed only in the stopped in-memory broker, so the log cannot be rebuilt "
                    "exactly. `make clean` starts the local pipeline over (bulk snapshot and stream history reload)."
                )
        ends[partition] = len(landed)
    return ends


def resume_timepoint(messages: Mapping[int, list[LandedMessage]], partitions: int) -> int | None:
    """The last timepoint every Kafka partition has landed up to (None: start from the first event).

    In one partition the producer's messages follow the stream order, so the last landed timepoint
    of a partition bounds everything the stream sent to it; across partitions only the smallest of
    these bounds is safe.
    """
    bounds = []
    for partition in range(partitions):
        timepoints = [m.timepoint for m in messages.get(partition, []) if m.timepoint is not None]
        if not timepoints:
            return None
        bounds.append(max(timepoints))
    return min(bounds) if bounds else None


def produce_back(config: Mapping[str, str], topic: str, messages: Mapping[int, list[LandedMessage]]) -> None:
    """Produce the landed messages to the empty topic, each at its original offset (checked)."""
    from confluent_kafka import Producer

    from ch_pipeline.kafka.offsets import probe_offsets
    from ch_pipeline.kafka.producer import TIMEPOINT_HEADER

    _, ends = probe_offsets(config, topic)
    if any(ends.values()):
        raise RestoreRefused(f"topic {topic} already holds messages ({ends}): restore only fills a new, empty topic")
    mismatches: list[str] = []

    def check_offset(expected: int):
        def on_delivery(err, msg) -> None:
            if err is not None or msg.offset() != expected:
                mismatches.append(f"p{msg.partition()}:{expected} -> {err or msg.offset()}")

        return on_delivery

    producer = Producer({**config, "enable.idempotence": True, "linger.ms": 20})
    for partition, landed in sorted(messages.items()):
        for m in landed:
            headers = [(TIMEPOINT_HEADER, str(m.timepoint).encode())] if m.timepoint is not None else None
            kwargs = {"timestamp": m.timestamp_ms} if m.timestamp_ms is not None else {}
            while True:
                try:
                    producer.produce(topic, m.value, m.key, partition=partition, headers=headers,
                                     on_delivery=check_offset(m.offset), **kwargs)  # fmt: skip
                    break
                except BufferError:  # the local queue is full: let deliveries drain
                    producer.poll(0.1)
        producer.poll(0)
    if producer.flush(120) or mismatches:
        raise RestoreRefused(f"the restored topic does not match the landed rows ({mismatches[:5]}): not starting")


def restore_topic(
    duckdb_path: Path, config: Mapping[str, str], topic: str, partitions: int, spec: StreamSpec = COMPANIES_STREAM
) -> Restored | None:
    """Rebuild the stream's topic from the warehouse; None when nothing has landed yet (a first start)."""
    messages = landed_messages(duckdb_path, spec)
    if not messages:
        return None
    if max(messages) >= partitions:
        raise RestoreRefused(f"the warehouse holds Kafka partition {max(messages)}, the local topic has {partitions}")
    ends = check_complete(messages)
    produce_back(config, topic, messages)
    return Restored({p: ends.get(p, 0) for p in range(partitions)}, resume_timepoint(messages, partitions))


def reset_instance(dagster_home: Path, ends_by_stream: Mapping[str, Mapping[int, int]]) -> list[str]:
    """Point the Dagster instance at the restored logs (stream name -> next offset per Kafka partition;
    all zeros for a stream that had landed nothing); returns what it changed, for the console."""
    import dagster as dg
    from dagster._core.scheduler.instigation import InstigatorType
    from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter
    from dagster._core.storage.tags import RUN_KEY_TAG

    from ch_pipeline.defs.stream import OFFSETS_TAG, read_cursor, write_cursor
    from ch_pipeline.kafka.offsets import parse_partition_key

    by_sensor = {STREAMS[name].kafka_sensor: dict(ends) for name, ends in ends_by_stream.items()}
    by_job = {STREAMS[name].landing_job: dict(ends) for name, ends in ends_by_stream.items()}
    changes = []
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
            ends = by_sensor.get(state.origin.instigator_name)
            if ends is not None and state.instigator_data is not None:
                cursor = read_cursor(state.instigator_data.cursor)
                if cursor != ends:
                    instance.update_instigator_state(state.with_data(state.instigator_data._replace(cursor=write_cursor(ends))))
                    changes.append(f"{state.origin.instigator_name} cursor {write_cursor(cursor)} -> {write_cursor(ends)}")
        in_flight = [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
        unfinished = [*in_flight, DagsterRunStatus.QUEUED]
        dropped = 0
        for run in instance.get_runs(filters=RunsFilter(statuses=[*unfinished, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED])):
            offsets, ends = run.tags.get(OFFSETS_TAG), by_job.get(run.job_name)
            # A landing of offsets the restored log does not hold (they were never landed, so were not restored).
            if offsets and ends is not None and any(r.last >= ends.get(r.partition, 0) for r in parse_partition_key(offsets)):
                if run.status in unfinished:
                    instance.report_run_canceled(run, message="its offsets never landed and are not in the restored topic")
                    dropped += 1
                # The restored log reaches these offsets again, with other messages, and its sensor will
                # cut the same key: a run still holding the key would make the daemon skip that landing.
                if RUN_KEY_TAG in run.tags:
                    instance.add_run_tags(run.run_id, {RUN_KEY_TAG: f"{run.tags[RUN_KEY_TAG]} (not in the restored log)"})
            elif run.status in in_flight:
                instance.report_run_failed(run, message="the ch-pipeline run that ran it stopped; run retries re-run it")
                changes.append(f"run {run.run_id[:8]} ({run.job_name}) was in flight: failed, to be retried")
        if dropped:
            changes.append(f"canceled {dropped} landings of offsets that never landed")
    return changes
