"""Every stream through the real replay server and the real broker: its topic, its key, its checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ch_pipeline.companies_house.replay_server import ReplayServer
from ch_pipeline.companies_house.stream_events import final_items
from ch_pipeline.companies_house.streams import STREAM_NAMES, item_key_of, kafka_key_of, stream
from ch_pipeline.kafka.checkpoint import read_checkpoint
from ch_pipeline.kafka.producer import StreamProducer
from ch_pipeline.settings import Settings
from ch_pipeline_tests.support.kafka import PARTITIONS, read_topic, timepoint_header
from ch_pipeline_tests.support.producer import producer_env
from ch_pipeline_tests.support.stream import fast_stream

OTHER_STREAMS = [name for name in STREAM_NAMES if name != "companies"]
# Enough events that every resource kind occurs (the rarest PSC kinds are ~1% of new PSCs).
EVENTS = {"persons-with-significant-control": 2000}


@pytest.mark.parametrize("name", OTHER_STREAMS)
def test_each_kind_lands_in_its_streams_topic_keyed_and_the_ground_truth_drops_deleted_items(broker, topic_name, tmp_path, name):
    spec = stream(name)
    broker.create_topic(topic_name, PARTITIONS)
    with ReplayServer(events=300, seed=31, heartbeat_interval=0.05, stream_events=EVENTS) as server:
        served = server.log(name)
        producer = StreamProducer(fast_stream(server.url_for(name)), {"bootstrap.servers": broker.bootstrap_servers}, topic_name,
                                  tmp_path / "checkpoint", max_events=len(served.lines), stream_name=name)  # fmt: skip
        result = producer.run(threading.Event())
    assert (result.delivered, result.delivery_errors, result.checkpoint) == (len(served.lines), 0, served.timepoints[-1])
    messages = read_topic(broker.bootstrap_servers, topic_name)
    assert sorted(m.value() for m in messages) == sorted(served.lines), "each served line once, its exact bytes"
    events = [json.loads(m.value()) for m in sorted(messages, key=lambda m: timepoint_header(m))]
    assert {e["resource_kind"] for e in events} == set(spec.resource_kinds), "every kind of the stream"
    for message, event in zip(sorted(messages, key=timepoint_header), events):
        assert message.key().decode() == kafka_key_of(spec, event)
        assert message.key().decode() == (event["resource_uri"].lstrip("/").split("/")[1] if spec.under_company else event["resource_id"])

    truth = final_items(name, events)
    assert truth == final_items(name, [json.loads(line) for line in served.lines]), "Kafka holds the served truth"
    last = {}
    for event in events:  # generated published_at never goes backwards: timepoint order is event order
        last[item_key_of(spec, event)] = event
    gone = {key for key, event in last.items() if event["event"]["type"] == "deleted"}
    assert gone and set(truth) == set(last) - gone, "an item whose last event is a deletion is not current"
    assert read_checkpoint(tmp_path / "checkpoint", server.url_for(name)) == served.timepoints[-1]


def test_produce_stream_officers_uses_its_own_topic_and_checkpoint_and_leaves_companies_alone(broker, topic_name, tmp_path):
    officers_topic = topic_name + "_officers"
    broker.create_topic(officers_topic, PARTITIONS)
    with ReplayServer(events=60, seed=32, heartbeat_interval=0.2) as server:
        served = server.log("officers")
        # CH_STREAM_URL names the companies stream; the officers URL is derived from it.
        env = producer_env(server.url, broker.bootstrap_servers, topic_name, tmp_path / "producer.checkpoint",
                           KAFKA_TOPIC_OFFICERS=officers_topic)  # fmt: skip
        result = subprocess.run([sys.executable, "-m", "ch_pipeline.cli", "produce", "--stream", "officers", "--max-events",
                                 str(len(served.lines))], env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"resuming {server.url_for('officers')} from now" in result.stderr
    assert f"to {officers_topic}; checkpoint at timepoint {served.timepoints[-1]}" in result.stdout
    assert read_checkpoint(tmp_path / "producer-officers.checkpoint", server.url_for("officers")) == served.timepoints[-1]
    assert not (tmp_path / "producer.checkpoint").exists(), "the companies checkpoint is not touched"
    assert sorted(m.value() for m in read_topic(broker.bootstrap_servers, officers_topic)) == sorted(served.lines)


def test_stream_settings_default_from_the_companies_contract_and_take_overrides(monkeypatch, tmp_path):
    for name in ("KAFKA_TOPIC", "CH_CHECKPOINT_PATH", "CH_STREAM_URL_CHARGES", "KAFKA_TOPIC_CHARGES", "CH_CHECKPOINT_PATH_CHARGES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CH_STREAM_URL", "https://stream.companieshouse.gov.uk/companies")
    settings = Settings.from_env()
    companies = settings.stream_settings("companies")
    assert (companies.url, companies.topic, companies.checkpoint_path) == (settings.stream_url, "company_house", tmp_path / "producer.checkpoint")
    pscs = settings.stream_settings("persons-with-significant-control")
    assert pscs.url == "https://stream.companieshouse.gov.uk/persons-with-significant-control"
    assert (pscs.topic, pscs.checkpoint_path.name) == ("company_house_pscs", "producer-persons-with-significant-control.checkpoint")
    assert pscs.topic_env == "KAFKA_TOPIC_PERSONS_WITH_SIGNIFICANT_CONTROL"

    monkeypatch.setenv("CH_STREAM_URL_CHARGES", "http://proxy.local/ch/charges")
    monkeypatch.setenv("KAFKA_TOPIC_CHARGES", "uk_charges")
    monkeypatch.setenv("CH_CHECKPOINT_PATH_CHARGES", str(tmp_path / "state" / "charges.cp"))
    charges = Settings.from_env().stream_settings("charges")
    assert (charges.url, charges.topic, charges.checkpoint_path) == ("http://proxy.local/ch/charges", "uk_charges", Path(tmp_path / "state" / "charges.cp"))
    with pytest.raises(ValueError, match="unknown Companies House stream 'nope'"):
        settings.stream_settings("nope")
