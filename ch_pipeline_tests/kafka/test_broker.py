"""The embedded broker is a real Kafka: idempotent keyed produce, exact reads by offset."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import defaultdict

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KPTopicPartition
from kafka.admin import NewTopic as KPNewTopic

from ch_pipeline.kafka.broker import BrokerError, LocalBroker, free_port


def read_range(bootstrap: str, topic: str, partition: int, start: int, count: int) -> list:
    """Read exactly ``count`` messages from ``start`` by assign + explicit offset (no group)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, partition, start)])
    messages = []
    deadline = time.monotonic() + 20
    while len(messages) < count and time.monotonic() < deadline:
        for message in consumer.consume(num_messages=500, timeout=0.5):
            assert message.error() is None, message.error()
            messages.append(message)
    consumer.close()
    return messages


def test_idempotent_keyed_produce_reads_back_every_message_in_order(broker, topic_name):
    assert broker.create_topic(topic_name, partitions=2) is True
    assert broker.create_topic(topic_name, partitions=2) is False  # second create is a no-op
    metadata = broker.admin().list_topics(topic_name, timeout=5)
    assert len(metadata.topics[topic_name].partitions) == 2

    producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "enable.idempotence": True, "acks": "all"})
    delivered: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered[msg.partition()].append((msg.offset(), msg.value()))

    keys = [f"{n:08d}".encode() for n in range(40)]
    sent = 2000
    for i in range(sent):
        producer.produce(topic_name, key=keys[i % len(keys)], value=f"{keys[i % len(keys)].decode()}:{i}".encode(), on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert errors == []
    assert sum(len(v) for v in delivered.values()) == sent
    assert set(delivered) == {0, 1}, "keys should spread over both partitions"

    for partition, acks in delivered.items():
        offsets = [offset for offset, _ in acks]
        assert offsets == list(range(len(acks))), "offsets are dense and start at 0"
        messages = read_range(broker.bootstrap_servers, topic_name, partition, 0, len(acks))
        assert [m.offset() for m in messages] == offsets
        assert [m.value() for m in messages] == [value for _, value in acks]
        # one key always lands in one partition, and its values come back in produce order
        by_key: dict[bytes, list[int]] = defaultdict(list)
        for m in messages:
            assert m.partition() == partition
            by_key[m.key()].append(int(m.value().split(b":")[1]))
        for seq in by_key.values():
            assert seq == sorted(seq)

    # a read from the middle returns exactly the rest of the partition
    middle = len(delivered[0]) // 2
    tail = read_range(broker.bootstrap_servers, topic_name, 0, middle, len(delivered[0]) - middle)
    assert [m.offset() for m in tail] == list(range(middle, len(delivered[0])))


def test_independent_pure_python_client_round_trip(broker, topic_name):
    """kafka-python (its own protocol implementation, not librdkafka) creates, produces and reads."""
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    admin.create_topics([KPNewTopic(topic_name, num_partitions=1, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    for i in range(10):
        producer.send(topic_name, key=b"k", value=b"v%d" % i)
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers)
    tp = KPTopicPartition(topic_name, 0)
    consumer.assign([tp])
    consumer.seek(tp, 0)
    values = []
    deadline = time.monotonic() + 15
    while len(values) < 10 and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            values.extend(r.value for r in records)
    consumer.close()
    assert values == [b"v%d" % i for i in range(10)]


def test_broker_stops_with_its_context():
    with LocalBroker() as broker:
        assert broker.running
        process = broker._process
    assert process.poll() is not None, "the broker process must be gone after the block"


def test_taken_port_is_a_clear_error(broker):
    with pytest.raises(BrokerError, match="already in use"):
        LocalBroker(port=broker.port).start()


def test_cli_broker_serves_and_stops_on_sigterm():
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "ch_pipeline.cli", "broker", "--port", str(port), "--topic", "company_house"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            lines.append(line)
            if "broker ready" in line:
                break
        assert f"KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{port}" in "".join(lines)
        consumer = KafkaConsumer(bootstrap_servers=f"127.0.0.1:{port}")
        assert consumer.partitions_for_topic("company_house") == {0, 1}
        consumer.close()
        process.terminate()
        assert process.wait(timeout=15) == 0
        assert "broker stopped" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
