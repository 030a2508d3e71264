"""The producer against the real broker and the real replay server: exact, resumable, ordered."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from ch_pipeline.companies_house.events import company_number_of
from ch_pipeline.companies_house.replay_server import ReplayServer
from ch_pipeline.kafka.checkpoint import CheckpointError, DeliveryTracker, read_checkpoint, write_checkpoint
from ch_pipeline.kafka.producer import ProducerError, StreamProducer
from ch_pipeline_tests.support.kafka import PARTITIONS, read_topic, timepoint_header
from ch_pipeline_tests.support.stream import fast_stream


def run_until_checkpoint(producer: StreamProducer, timepoint: int, timeout: float = 60):
    """Run the producer in a thread and stop it once the checkpoint reaches ``timepoint``."""
    stop = threading.Event()
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(value=producer.run(stop)))
    worker.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and worker.is_alive():
        if producer.checkpoint_path.exists() and json.loads(producer.checkpoint_path.read_text())["timepoint"] >= timepoint:
            break
        time.sleep(0.05)
    stop.set()
    worker.join(timeout=90)
    assert "value" in result, "the producer did not finish"
    return result["value"]


@pytest.fixture
def topic(broker, topic_name) -> str:
    broker.create_topic(topic_name, PARTITIONS)
    return topic_name


def test_every_served_event_lands_once_with_its_key_header_and_bytes_in_order(broker, topic, tmp_path):
    checkpoint = tmp_path / "producer.checkpoint"
    with ReplayServer(events=1500, seed=11, heartbeat_interval=0.05) as server:
        producer = StreamProducer(fast_stream(server.url), {"bootstrap.servers": broker.bootstrap_servers}, topic, checkpoint,
                                  max_events=len(server.lines))  # fmt: skip
        result = producer.run(threading.Event())
    assert (result.delivered, result.delivery_errors) == (len(server.lines), 0)
    messages = read_topic(broker.bootstrap_servers, topic)

    assert sorted(m.value() for m in messages) == sorted(server.lines), "the original bytes, each exactly once"
    assert {timepoint_header(m) for m in messages} == set(range(1, 1501)), "N distinct timepoints"
    duplicates = [tp for tp, n in Counter(timepoint_header(m) for m in messages).items() if n > 1]
    assert duplicates, "the server's duplicates pass through with their timepoint"
    for message in messages:
        assert message.key().decode() == company_number_of(json.loads(message.value()))
    per_key = defaultdict(list)
    for message in sorted(messages, key=lambda m: (m.partition(), m.offset())):
        per_key[message.key()].append(timepoint_header(message))
    assert all(tps == sorted(tps) for tps in per_key.values()), "timepoint order per key"
    assert len({m.partition() for m in messages}) == PARTITIONS
    assert read_checkpoint(checkpoint, server.url) == 1500


def test_three_dropped_connections_lose_nothing_and_repeat_nothing(broker, topic, tmp_path):
    with ReplayServer(events=600, seed=12, drop_after=150, max_drops=3, split_lines=True, heartbeat_interval=0.05) as server:
        producer = StreamProducer(fast_stream(server.url), {"bootstrap.servers": broker.bootstrap_servers}, topic,
                                  tmp_path / "checkpoint")  # fmt: skip
        result = run_until_checkpoint(producer, timepoint=600)
        assert server.drops == 3
    assert result.checkpoint == 600 and result.delivery_errors == 0
    received = Counter(timepoint_header(m) for m in read_topic(broker.bootstrap_servers, topic))
    served = Counter(server.timepoints)
    assert set(received) == set(served), "no timepoint missing"
    assert all(received[tp] <= served[tp] for tp in received), "a reconnect re-sends nothing already produced"


def test_a_restart_resumes_after_the_checkpoint(broker, topic, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    config = {"bootstrap.servers": broker.bootstrap_servers}
    with ReplayServer(events=300, seed=13, heartbeat_interval=0.05) as server:
        first = StreamProducer(fast_stream(server.url), config, topic, checkpoint, max_events=100).run(threading.Event())
        resume_at = read_checkpoint(checkpoint, server.url)
        assert resume_at == first.checkpoint and resume_at is not None
        remaining = sum(tp > resume_at for tp in server.timepoints)
        StreamProducer(fast_stream(server.url, resume_at), config, topic, checkpoint, max_events=remaining).run(threading.Event())
    received = Counter(timepoint_header(m) for m in read_topic(broker.bootstrap_servers, topic))
    served = Counter(server.timepoints)
    assert set(received) == set(served), "nothing lost"
    assert all(received[tp] <= served[tp] for tp in received), "nothing before the checkpoint sent again"


@pytest.mark.parametrize("status", [429, 503])
def test_rate_limits_and_unavailable_back_off_then_deliver_everything(broker, topic, tmp_path, status):
    with ReplayServer(events=50, seed=14, heartbeat_interval=0.05) as server:
        server.fail_next(status, 2)
        producer = StreamProducer(fast_stream(server.url), {"bootstrap.servers": broker.bootstrap_servers}, topic,
                                  tmp_path / "checkpoint", max_events=len(server.lines))  # fmt: skip
        result = producer.run(threading.Event())
        assert server.requests_served == 3
    assert result.checkpoint == 50
    assert sorted(m.value() for m in read_topic(broker.bootstrap_servers, topic)) == sorted(server.lines)


def test_a_missing_topic_fails_with_a_clear_message(broker, topic_name, tmp_path):
    with ReplayServer(events=5, heartbeat_interval=0.05) as server:
        producer = StreamProducer(fast_stream(server.url), {"bootstrap.servers": broker.bootstrap_servers}, topic_name,
                                  tmp_path / "checkpoint", max_events=5)  # fmt: skip
        with pytest.raises(ProducerError, match=f"topic '{topic_name}' does not exist: create it"):
            producer.run(threading.Event())
    assert not (tmp_path / "checkpoint").exists()


def test_the_checkpoint_passes_a_message_only_when_everything_before_it_is_delivered():
    tracker = DeliveryTracker(checkpoint=None)
    first, second, unparsed, third = tracker.sent(1), tracker.sent(2), tracker.sent(None), tracker.sent(3)
    tracker.on_delivered(third)  # delivery reports arrive out of order across partitions
    tracker.on_delivered(second)
    assert tracker.safe_timepoint is None
    tracker.on_delivered(first)
    assert tracker.safe_timepoint == 2
    tracker.on_delivered(unparsed)
    assert tracker.safe_timepoint == 3 and tracker.in_flight == 0

    failing = DeliveryTracker(checkpoint=3)
    lost, later = failing.sent(4), failing.sent(5)
    failing.on_failed(lost)
    failing.on_delivered(later)
    assert failing.safe_timepoint == 3 and failing.failed == 1, "a failed delivery pins the checkpoint"


def test_checkpoint_file_is_replaced_whole_and_belongs_to_one_stream(tmp_path):
    path = tmp_path / "state" / "producer.checkpoint"
    assert read_checkpoint(path, "http://a/companies") is None
    write_checkpoint(path, 41, "http://a/companies")
    write_checkpoint(path, 42, "http://a/companies")
    assert read_checkpoint(path, "http://a/companies") == 42
    assert [p.name for p in path.parent.iterdir()] == ["producer.checkpoint"], "no temp file left behind"
    with pytest.raises(CheckpointError, match="delete it"):
        read_checkpoint(path, "https://stream.companieshouse.gov.uk/companies")
    Path(path).write_text("garbage")
    with pytest.raises(CheckpointError, match="not a producer checkpoint"):
        read_checkpoint(path, "http://a/companies")
