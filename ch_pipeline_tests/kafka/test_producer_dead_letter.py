"""An event Kafka will never take is dead-lettered and skipped: it never stops the producer (issue 12).

Real broker, real replay server: one served line is padded past librdkafka's 1 MB
``message.max.bytes``. A refusal in the delivery report (a broker whose ``max.message.bytes`` is
below the client's) cannot be provoked on the local broker, which stores that topic config but
does not enforce it, so those tests inject the failed report into an otherwise real producer.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Message, Producer

from ch_pipeline.companies_house.events import company_number_of, event_bytes
from ch_pipeline.companies_house.replay_server import ReplayServer
from ch_pipeline.kafka import producer as producer_module
from ch_pipeline.kafka.checkpoint import DeliveryTracker, read_checkpoint
from ch_pipeline.kafka.producer import TIMEPOINT_HEADER, ProducerError, StreamProducer
from ch_pipeline_tests.support.kafka import PARTITIONS, read_topic, timepoint_header
from ch_pipeline_tests.support.stream import fast_stream

OVER_MESSAGE_MAX_BYTES = 1_100_000  # librdkafka's message.max.bytes default is 1,000,000


@pytest.fixture
def topic(broker, topic_name) -> str:
    broker.create_topic(topic_name, PARTITIONS)
    return topic_name


def served_once_in_the_middle(server: ReplayServer) -> int:
    """The index of a line in the second half whose timepoint is served only once (no duplicate)."""
    counts = Counter(server.timepoints)
    return next(i for i in range(len(server.lines) // 2, len(server.lines) - 1) if counts[server.timepoints[i]] == 1)


def replay_with_oversized_event(seed: int) -> tuple[ReplayServer, int]:
    """A replay server whose line at the returned index is the same event (timepoint, company)
    padded past 1 MB."""
    server = ReplayServer(events=40, seed=seed, heartbeat_interval=0.05)
    index = served_once_in_the_middle(server)
    event = json.loads(server.lines[index])
    event["padding"] = "x" * OVER_MESSAGE_MAX_BYTES
    server.lines[index] = event_bytes(event)
    return server, index


def dead_letters(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def assert_in_kafka_exactly_once(bootstrap: str, topic: str, lines: list[bytes]) -> None:
    messages = read_topic(bootstrap, topic)
    assert sorted(m.value() for m in messages) == sorted(lines), "every other event, byte for byte, exactly once"
    assert Counter(timepoint_header(m) for m in messages) == Counter(json.loads(line)["event"]["timepoint"] for line in lines)


def test_an_event_over_message_max_bytes_is_dead_lettered_and_every_later_event_still_lands(
    broker, topic, tmp_path, caplog, monkeypatch
):
    caplog.set_level(logging.INFO, logger=producer_module.__name__)
    checkpoint, dead_letter_path = tmp_path / "producer.checkpoint", tmp_path / "producer.dead-letter.ndjson"
    server, big = replay_with_oversized_event(seed=41)
    big_line, big_timepoint = server.lines[big], server.timepoints[big]

    written_checkpoints = []

    def write_checkpoint(path, timepoint, stream_url):
        # The rule: a checkpoint passes the refused event only once its dead-letter record is on disk.
        if timepoint >= big_timepoint:
            assert [r["timepoint"] for r in dead_letters(dead_letter_path)] == [big_timepoint]
        written_checkpoints.append(timepoint)
        original_write_checkpoint(path, timepoint, stream_url)

    original_write_checkpoint = producer_module.write_checkpoint
    monkeypatch.setattr(producer_module, "write_checkpoint", write_checkpoint)
    with server:
        producer = StreamProducer(fast_stream(server.url), {"bootstrap.servers": broker.bootstrap_servers}, topic,
                                  checkpoint, max_events=len(server.lines))  # fmt: skip
        result = producer.run(threading.Event())

    others = server.lines[:big] + server.lines[big + 1 :]
    assert (result.delivered, result.dead_lettered, result.delivery_errors) == (len(others), 1, 0)
    assert_in_kafka_exactly_once(broker.bootstrap_servers, topic, others)
    assert read_checkpoint(checkpoint, server.url) == server.timepoints[-1] > big_timepoint, "past the event"
    assert written_checkpoints and written_checkpoints[-1] == server.timepoints[-1]

    [record] = dead_letters(dead_letter_path)
    assert record["timepoint"] == big_timepoint
    assert record["company_number"] == company_number_of(json.loads(big_line))
    assert base64.b64decode(record["raw_value_base64"]) == big_line, "the exact bytes, replayable"
    assert record["size"] == len(big_line) and record["topic"] == topic
    assert "MSG_SIZE_TOO_LARGE" in record["reason"]

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w for w in warnings if f"timepoint {big_timepoint}" in w and f"{len(big_line)} bytes" in w
            and str(dead_letter_path) in w], warnings  # fmt: skip
    progress = [r.getMessage() for r in caplog.records if "events/s" in r.getMessage()]
    assert "1 dead-lettered" in progress[-1], progress


def test_a_restart_from_the_checkpoint_after_the_skip_never_meets_the_event_again(broker, topic, tmp_path):
    checkpoint, dead_letter_path = tmp_path / "producer.checkpoint", tmp_path / "producer.dead-letter.ndjson"
    config = {"bootstrap.servers": broker.bootstrap_servers}
    server, big = replay_with_oversized_event(seed=42)
    with server:
        # The first run stops right after the oversized event, which is then the last it handled.
        first = StreamProducer(fast_stream(server.url), config, topic, checkpoint, max_events=big + 1).run(threading.Event())
        resume_at = read_checkpoint(checkpoint, server.url)
        assert resume_at == first.checkpoint == server.timepoints[big], "the checkpoint covers the dead-lettered event"
        rest = len(server.lines) - big - 1
        second = StreamProducer(fast_stream(server.url, resume_at), config, topic, checkpoint, max_events=rest).run(
            threading.Event()
        )
    assert (second.delivered, second.dead_lettered, second.delivery_errors) == (rest, 0, 0)
    assert [r["timepoint"] for r in dead_letters(dead_letter_path)] == [server.timepoints[big]], "dead-lettered once"
    assert_in_kafka_exactly_once(broker.bootstrap_servers, topic, server.lines[:big] + server.lines[big + 1 :])
    assert read_checkpoint(checkpoint, server.url) == server.timepoints[-1]


def broker_refusing(timepoint: int, code: int) -> type[Producer]:
    """A real producer, except that the message carrying ``timepoint`` is not sent and gets a failed
    delivery report with ``code`` at the next poll or flush, as from a broker refusing it."""

    class RefusingProducer(Producer):
        def __init__(self, config):
            super().__init__(config)
            self.reports = []

        def produce(self, topic, key=None, value=None, headers=None, on_delivery=None):
            if (TIMEPOINT_HEADER, str(timepoint).encode()) in (headers or []):
                message = Message(topic=topic, key=key, value=value, headers=headers, error=KafkaError(code))
                self.reports.append(lambda: on_delivery(KafkaError(code), message))
                return
            super().produce(topic, key=key, value=value, headers=headers, on_delivery=on_delivery)

        def poll(self, timeout=-1):
            while self.reports:
                self.reports.pop(0)()
            return super().poll(timeout)

        def flush(self, timeout=-1):
            self.poll(0)
            return super().flush(timeout)

    return RefusingProducer


@pytest.mark.parametrize("code", [KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_RECORD])
def test_an_event_refused_in_the_delivery_report_is_dead_lettered_the_same_way(broker, topic, tmp_path, monkeypatch, code):
    checkpoint, dead_letter_path = tmp_path / "producer.checkpoint", tmp_path / "producer.dead-letter.ndjson"
    with ReplayServer(events=30, seed=43, heartbeat_interval=0.05) as server:
        refused = served_once_in_the_middle(server)
        monkeypatch.setattr(producer_module, "Producer", broker_refusing(server.timepoints[refused], code))
        producer = StreamProducer(fast_stream(server.url), {"bootstrap.servers": broker.bootstrap_servers}, topic,
                                  checkpoint, max_events=len(server.lines))  # fmt: skip
        result = producer.run(threading.Event())

    others = server.lines[:refused] + server.lines[refused + 1 :]
    assert (result.delivered, result.dead_lettered, result.delivery_errors) == (len(others), 1, 0)
    assert_in_kafka_exactly_once(broker.bootstrap_servers, topic, others)
    assert read_checkpoint(checkpoint, server.url) == server.timepoints[-1]
    [record] = dead_letters(dead_letter_path)
    assert record["timepoint"] == server.timepoints[refused]
    assert base64.b64decode(record["raw_value_base64"]) == server.lines[refused]
    assert KafkaError(code).name() in record["reason"] and "delivery report" in record["reason"]


def test_a_transient_delivery_failure_is_not_dead_lettered_and_pins_the_checkpoint(broker, topic, tmp_path, monkeypatch):
    checkpoint, dead_letter_path = tmp_path / "producer.checkpoint", tmp_path / "producer.dead-letter.ndjson"
    with ReplayServer(events=30, seed=44, heartbeat_interval=0.05) as server:
        failed = served_once_in_the_middle(server)
        # What librdkafka reports once its own retries ran out (broker down longer than message.timeout.ms).
        monkeypatch.setattr(producer_module, "Producer", broker_refusing(server.timepoints[failed], KafkaError._MSG_TIMED_OUT))
        producer = StreamProducer(fast_stream(server.url), {"bootstrap.servers": broker.bootstrap_servers}, topic,
                                  checkpoint, max_events=len(server.lines))  # fmt: skip
        with pytest.raises(ProducerError, match="1 deliveries failed"):
            producer.run(threading.Event())
    assert read_checkpoint(checkpoint, server.url) == server.timepoints[failed - 1], "stays before it: a restart re-sends it"
    assert not dead_letter_path.exists()


def test_the_checkpoint_passes_a_refused_message_only_once_it_is_dead_lettered():
    tracker = DeliveryTracker(checkpoint=None)
    first, refused, third = tracker.sent(1), tracker.sent(2), tracker.sent(3)
    tracker.on_refused(refused, "MSG_SIZE_TOO_LARGE", b"00000001", b"{}")
    tracker.on_delivered(third)
    tracker.on_delivered(first)
    assert tracker.safe_timepoint == 1, "refused but not yet in the dead-letter file: it pins the checkpoint"
    assert tracker.take_refused() == [(refused, "MSG_SIZE_TOO_LARGE", b"00000001", b"{}")]
    assert tracker.take_refused() == []
    tracker.on_dead_lettered(refused)
    assert tracker.safe_timepoint == 3 and tracker.in_flight == 0
    assert (tracker.delivered, tracker.dead_lettered, tracker.failed) == (2, 1, 0)
