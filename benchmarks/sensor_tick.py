"""Sensor tick time with a 1M-message backlog, next to a tick that reads the backlog to find its end.

Ours: the real ``company_house_kafka_sensor`` evaluated against a real Dagster instance and the
local broker; it probes each partition's end from the reported high watermark (docs/architecture.md §9), so it
reads at most the last record batch. Baseline: a sensor that finds the end by consuming from its
cursor to the end-of-partition event (what the whole backlog costs to read once).

``python -m benchmarks.sensor_tick [--messages N]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import dagster as dg
from confluent_kafka import Consumer, KafkaError, TopicPartition

from ch_pipeline.defs.resources import KafkaResource
from ch_pipeline.defs.stream import build_kafka_sensor
from ch_pipeline.kafka.broker import LocalBroker
from ch_pipeline_tests.warehouse.messages import produce_filler

TOPIC = "company_house"
PARTITIONS = 2
TICKS = 5


def tick_seconds(sensor: dg.SensorDefinition, kafka: KafkaResource, instance: dg.DagsterInstance) -> tuple[float, int]:
    start = time.perf_counter()
    result = sensor(dg.build_sensor_context(instance=instance, cursor=None, resources={"kafka": kafka}))
    return time.perf_counter() - start, len(result.run_requests)


def read_to_end_seconds(bootstrap: str) -> float:
    """The baseline: consume every message from offset 0 until each partition reports its end."""
    start = time.perf_counter()
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "baseline", "enable.partition.eof": True, "enable.auto.commit": False})
    consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])
    done: set[int] = set()
    while len(done) < PARTITIONS:
        for message in consumer.consume(num_messages=10_000, timeout=1):
            if message.error() and message.error().code() == KafkaError._PARTITION_EOF:
                done.add(message.partition())
    consumer.close()
    return time.perf_counter() - start


def run(messages: int = 1_000_000) -> list[dict]:
    with LocalBroker() as broker, dg.instance_for_test() as instance:
        broker.create_topic(TOPIC, PARTITIONS)
        produce_filler(broker.bootstrap_servers, TOPIC, {p: messages // PARTITIONS for p in range(PARTITIONS)}, size=200)
        kafka = KafkaResource(bootstrap_servers=broker.bootstrap_servers, topic=TOPIC)
        sensor = build_kafka_sensor()
        ticks = [tick_seconds(sensor, kafka, instance) for _ in range(TICKS)]
        assert all(requests == -(-messages // 100_000) for _, requests in ticks), ticks
        ours = statistics.median(seconds for seconds, _ in ticks)
        baseline = read_to_end_seconds(broker.bootstrap_servers)
    return [
        {
            "measure": f"sensor tick, {messages:,}-message backlog (median of {TICKS})",
            "ours": ours,
            "baseline": baseline,
            "ratio": baseline / ours,
            "unit": "s (baseline: read the backlog to its end); target < 1 s",
        }
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000)
    for row in run(parser.parse_args().messages):
        print(row)
