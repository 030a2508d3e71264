"""``ch-pipeline produce`` as a real process: SIGKILL and restart, SIGTERM, 401, 416."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter

import pytest

from ch_pipeline.companies_house.replay_server import ReplayServer
from ch_pipeline.kafka.checkpoint import read_checkpoint
from ch_pipeline_tests.support.kafka import PARTITIONS, read_topic, timepoint_header
from ch_pipeline_tests.support.producer import producer_env, start_producer, wait_for_checkpoint


@pytest.fixture
def topic(broker, topic_name) -> str:
    broker.create_topic(topic_name, PARTITIONS)
    return topic_name


def test_sigkill_then_restart_resumes_from_the_checkpoint_and_covers_every_timepoint(broker, topic, tmp_path):
    checkpoint = tmp_path / "producer.checkpoint"
    # Paced, so the kill lands mid-stream.
    with ReplayServer(events=800, seed=21, rate=400, heartbeat_interval=0.2) as server:
        env = producer_env(server.url, broker.bootstrap_servers, topic, checkpoint)
        first = start_producer(env)
        wait_for_checkpoint(checkpoint, 100, first)
        first.kill()
        first.wait(timeout=10)
        resume_at = read_checkpoint(checkpoint, server.url)
        assert resume_at < server.timepoints[-1], "the kill should land mid-stream"
        remaining = sum(tp > resume_at for tp in server.timepoints)

        second = start_producer(env, "--max-events", str(remaining))
        output, _ = second.communicate(timeout=120)
        assert second.returncode == 0, output
        assert f"resuming {server.url} from timepoint {resume_at}" in output

    received = Counter(timepoint_header(m) for m in read_topic(broker.bootstrap_servers, topic))
    served = Counter(server.timepoints)
    assert set(received) == set(served), "the union of both runs covers every timepoint"
    before = {tp for tp in served if tp <= resume_at}
    assert all(received[tp] == served[tp] for tp in before), "nothing up to the checkpoint is re-sent"
    assert all(served[tp] <= received[tp] <= 2 * served[tp] for tp in set(served) - before), "bounded duplicates"
    assert read_checkpoint(checkpoint, server.url) == server.timepoints[-1]


def test_sigterm_flushes_checkpoints_and_exits_zero(broker, topic, tmp_path):
    checkpoint = tmp_path / "producer.checkpoint"
    # Kafka settings from a librdkafka properties file (the Confluent Cloud getting_started.ini shape).
    config_file = tmp_path / "kafka.ini"
    config_file.write_text(f"[default]\nbootstrap.servers={broker.bootstrap_servers}\nclient.id=ch-test\n")
    with ReplayServer(events=2000, seed=22, rate=300, heartbeat_interval=0.2) as server:
        env = producer_env(server.url, broker.bootstrap_servers, topic, checkpoint, KAFKA_CONFIG_FILE=str(config_file))
        del env["KAFKA_BOOTSTRAP_SERVERS"]
        process = start_producer(env)
        wait_for_checkpoint(checkpoint, 50, process)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    final = read_checkpoint(checkpoint, server.url)
    assert f"checkpoint at timepoint {final}" in output
    assert "events/s" in output and "delivery errors" in output, "the periodic progress line"
    received = {timepoint_header(m) for m in read_topic(broker.bootstrap_servers, topic)}
    assert set(range(1, final + 1)) <= received, "everything up to the final checkpoint is in Kafka"


def test_a_rejected_key_exits_non_zero_with_the_message(broker, topic, tmp_path):
    with ReplayServer(events=5, api_key="the-right-key", heartbeat_interval=0.2) as server:
        env = producer_env(server.url, broker.bootstrap_servers, topic, tmp_path / "cp", CH_STREAM_API_KEY="a-rest-key")
        result = subprocess.run([sys.executable, "-m", "ch_pipeline.cli", "produce"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "rejected the API key (401)" in result.stderr and "CH_STREAM_API_KEY" in result.stderr


def test_an_expired_checkpoint_stops_with_instructions_or_restarts_from_now_with_the_flag(broker, topic, tmp_path):
    checkpoint = tmp_path / "producer.checkpoint"
    with ReplayServer(events=30, seed=23, first_timepoint=5000, heartbeat_interval=0.2) as server:
        checkpoint.write_text(json.dumps({"timepoint": 12, "stream_url": server.url}))
        env = producer_env(server.url, broker.bootstrap_servers, topic, checkpoint)
        stopped = subprocess.run([sys.executable, "-m", "ch_pipeline.cli", "produce"], env=env, capture_output=True, text=True, timeout=60)
        assert stopped.returncode != 0
        assert "timepoint 12 is too old" in stopped.stderr and "monthly bulk file dated after the restart" in stopped.stderr
        assert read_checkpoint(checkpoint, server.url) == 12, "the checkpoint is kept for the user to decide"

        restarted = subprocess.run(
            [sys.executable, "-m", "ch_pipeline.cli", "produce", "--restart-from-now-if-expired", "--max-events", "10"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert restarted.returncode == 0, restarted.stderr
    assert "restarting from now" in restarted.stderr
    assert read_checkpoint(checkpoint, server.url) == server.timepoints[9]
    assert len(read_topic(broker.bootstrap_servers, topic)) == 10
