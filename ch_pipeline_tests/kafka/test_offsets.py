"""Offset ranges, the partition key, batch cutting and end-offset probing on the real broker."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, TopicPartition

from ch_pipeline.kafka.broker import free_port
from ch_pipeline.kafka.offsets import (
    KafkaUnavailable,
    OffsetRange,
    TopicMissing,
    cut_batches,
    format_partition_key,
    next_offsets,
    parse_partition_key,
    probe_offsets,
)
from ch_pipeline.kafka.reader import RangeNotAvailable, _batch_size, read_ranges
from ch_pipeline_tests.support.kafka import assert_contiguous
from ch_pipeline_tests.warehouse.messages import produce_filler


def test_partition_key_round_trip():
    ranges = [OffsetRange(1, 800, 899), OffsetRange(0, 1200, 1349)]
    key = format_partition_key(ranges)
    assert key == "p0:1200-1349,p1:800-899"
    assert parse_partition_key(key) == sorted(ranges)
    assert [r.size for r in parse_partition_key(key)] == [150, 100]


@pytest.mark.parametrize(
    "key",
    ["", "p0:5-4", "p0:1-2,p0:3-4", "p1:0-1,p0:0-1", "p0:1-2;p1:1-2", "0:1-2", "p0:01-2", "p-1:0-1", "p0:1-2,"],
)
def test_malformed_partition_keys_are_refused(key):
    with pytest.raises(ValueError):
        parse_partition_key(key)


def test_cut_batches_250k_into_contiguous_batches_of_at_most_100k():
    starts = {0: 0, 1: 0}
    ends = {0: 125_000, 1: 125_000}
    batches = cut_batches(starts, ends, 100_000)
    assert [sum(r.size for r in batch) for batch in batches] == [100_000, 100_000, 50_000]
    assert_contiguous(batches, starts, ends)
    assert next_offsets(batches) == ends


def test_cut_batches_respects_cursor_and_new_partitions():
    batches = cut_batches({0: 40, 1: 10}, {0: 50, 1: 10, 2: 3}, 7)
    assert [[str(r) for r in batch] for batch in batches] == [["p0:40-46"], ["p0:47-49", "p2:0-2"]]
    assert cut_batches({0: 5}, {0: 5}, 100) == []


def test_probe_finds_the_true_end_although_the_broker_reports_another(broker, topic_name):
    broker.create_topic(topic_name, 3)
    # Several flushes make several record batches per partition: the local broker's reported
    # high watermark is then the start of the last batch + 1 (docs/architecture.md §9), not the end.
    for _ in range(3):
        produce_filler(broker.bootstrap_servers, topic_name, {0: 3000, 1: 1000})
    config = {"bootstrap.servers": broker.bootstrap_servers}
    lows, ends = probe_offsets(config, topic_name)
    assert lows == {0: 0, 1: 0, 2: 0}
    assert ends == {0: 9000, 1: 3000, 2: 0}
    produce_filler(broker.bootstrap_servers, topic_name, {2: 1})
    assert probe_offsets(config, topic_name)[1] == {**ends, 2: 1}
    consumer = Consumer({**config, "group.id": "t"})
    reported = consumer.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=5)[1]
    consumer.close()
    assert reported <= 9000  # a lower bound only; on this broker usually below the end


def test_probe_reports_a_missing_topic(broker, topic_name):
    with pytest.raises(TopicMissing, match=topic_name):
        probe_offsets({"bootstrap.servers": broker.bootstrap_servers}, topic_name, timeout=5)


def test_probe_reports_a_broker_that_is_down():
    with pytest.raises(KafkaUnavailable, match="did not answer"):
        probe_offsets({"bootstrap.servers": f"127.0.0.1:{free_port()}"}, "company_house", timeout=1)


def test_reader_returns_exactly_the_ranges(broker, topic_name):
    broker.create_topic(topic_name, 2)
    produce_filler(broker.bootstrap_servers, topic_name, {0: 500, 1: 300})
    config = {"bootstrap.servers": broker.bootstrap_servers}
    ranges = [OffsetRange(0, 100, 249), OffsetRange(1, 0, 299)]
    seen = [(m.partition(), m.offset()) for chunk in read_ranges(config, topic_name, ranges, chunk=64) for m in chunk]
    assert sorted(seen) == [(0, o) for o in range(100, 250)] + [(1, o) for o in range(300)]
    assert len(seen) == len(set(seen))


def test_reader_asks_for_no_more_than_the_ranges_still_miss():
    """A consume asked for more messages than remain waits out its whole timeout for the rest."""
    ranges = {0: OffsetRange(0, 100, 249), 1: OffsetRange(1, 0, 299)}
    assert _batch_size(64, ranges, {0: 100, 1: 0}, {0, 1}) == 64
    assert _batch_size(10_000, ranges, {0: 100, 1: 0}, {0, 1}) == 450
    assert _batch_size(10_000, ranges, {0: 250, 1: 290}, {1}) == 10
    # Past the last offset (a range whose last offsets never arrive): still one, until the end-of-partition event.
    assert _batch_size(10_000, ranges, {0: 250, 1: 300}, {1}) == 1


def test_reader_reads_a_range_short_of_the_chunk_and_one_ending_mid_partition(broker, topic_name):
    broker.create_topic(topic_name, 2)
    produce_filler(broker.bootstrap_servers, topic_name, {0: 50, 1: 30})
    config = {"bootstrap.servers": broker.bootstrap_servers}
    ranges = [OffsetRange(0, 10, 39), OffsetRange(1, 0, 29)]
    seen = [(m.partition(), m.offset()) for chunk in read_ranges(config, topic_name, ranges) for m in chunk]
    assert sorted(seen) == [(0, o) for o in range(10, 40)] + [(1, o) for o in range(30)]


def test_reader_refuses_a_range_past_the_end(broker, topic_name):
    broker.create_topic(topic_name, 1)
    produce_filler(broker.bootstrap_servers, topic_name, {0: 10})
    with pytest.raises(RangeNotAvailable, match="ends at offset 10"):
        list(read_ranges({"bootstrap.servers": broker.bootstrap_servers}, topic_name, [OffsetRange(0, 5, 20)], timeout=10))
