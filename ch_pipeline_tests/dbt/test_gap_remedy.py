"""The remedy the producer prints on HTTP 416 fills the gap, followed literally (issue 16, item 2).

The real producer follows the replay server, stops, and is away longer than the stream keeps: the next
start gets 416 and prints what to do. The test runs the printed commands as printed (only the file's
date, which the message leaves to the user, is filled in): restart from now, then load the first monthly
bulk file dated after the restart with the printed `dagster asset materialize` command. The events in the
gap never reach Kafka; after the file, the core equals the ground truth of every event served.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb

from ch_pipeline.companies_house.bulk_csv import published_name, write_sample
from ch_pipeline.companies_house.events import timepoint_of
from ch_pipeline.companies_house.replay_server import ReplayServer
from ch_pipeline.defs.resources import KafkaResource, WarehouseResource
from ch_pipeline.defs.stream import company_house_stream, landing_run_config
from ch_pipeline.kafka.offsets import probe_offsets
from ch_pipeline.demo_verdict import COMPARED_COLUMNS, expected_core, normalise
from ch_pipeline_tests.dbt.bulk_months import write_register
from ch_pipeline_tests.dbt.conftest import configure_environment, load_bulk
from ch_pipeline_tests.dbt.history import parse_bulk_csv
from ch_pipeline_tests.dbt.test_event_order import core_build
from ch_pipeline_tests.support.producer import producer_env, wait_for_checkpoint

PARTITIONS = 2
BIN = Path(sys.executable).parent


def land_the_topic(bootstrap: str, topic: str, db: Path) -> None:
    """One landing run of every offset in the topic (landing again replaces rows by coordinates)."""
    _, ends = probe_offsets({"bootstrap.servers": bootstrap}, topic)  # the local broker's high watermark lags
    offsets = ",".join(f"p{p}:0-{end - 1}" for p, end in ends.items() if end)
    result = dg.materialize(
        [company_house_stream],
        resources={"kafka": KafkaResource(bootstrap_servers=bootstrap, topic=topic), "warehouse": WarehouseResource(duckdb_path=str(db))},
        run_config=landing_run_config(offsets),
    )  # fmt: skip
    assert result.success


def core_rows(db: Path) -> dict[str, tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(f"select company_number, {', '.join(COMPARED_COLUMNS)} from company_house_core").fetchall()
    return {number: normalise(dict(zip(COMPARED_COLUMNS, rest))) for number, *rest in rows}


def printed_commands(message: str) -> dict[str, list[str]]:
    """The commands in the message (between backticks), by program, as argv."""
    commands = [shlex.split(command) for command in re.findall(r"`([^`]+)`", message)]
    return {argv[0]: argv for argv in commands}


def test_the_remedy_printed_on_416_fills_the_gap(broker, topic_name: str, tmp_path: Path, monkeypatch):
    broker.create_topic(topic_name, PARTITIONS)
    db = configure_environment(monkeypatch, tmp_path)
    sample = write_sample(tmp_path / "baseline.csv", 400, seed=41)
    load_bulk(db, sample)
    bulk_rows = {number: dict(zip(COMPARED_COLUMNS, row[:4])) for number, row in parse_bulk_csv(sample).items()}
    checkpoint = tmp_path / "producer.checkpoint"

    # The producer follows the stream for 60 events, then stops; they land and reach the core.
    with ReplayServer(events=200, seed=41, heartbeat_interval=0.2) as server:
        port, served = server.port, [json.loads(line) for line in server.lines]
        env = producer_env(server.url, broker.bootstrap_servers, topic_name, checkpoint)
        first = subprocess.run([BIN / "ch-pipeline", "produce", "--max-events", "60"], env=env, capture_output=True, text=True, timeout=120)
        assert first.returncode == 0, first.stderr
        delivered = json.loads(checkpoint.read_text())["timepoint"]
    land_the_topic(broker.bootstrap_servers, topic_name, db)
    core_build()

    # Away longer than the stream keeps: only the last 50 events can be resumed from, so the next start gets 416.
    with ReplayServer(events=200, seed=41, retain=50, port=port, heartbeat_interval=0.2) as server:
        stopped = subprocess.run([BIN / "ch-pipeline", "produce"], env=env, capture_output=True, text=True, timeout=120)
        assert stopped.returncode != 0 and "416" in stopped.stderr, stopped.stderr
        commands = printed_commands(stopped.stderr)
        assert set(commands) == {"ch-pipeline", "dagster"}, stopped.stderr

        # 1. "Restart from now": the printed command, stopped (SIGTERM) once it delivered the stream's end.
        restarted = subprocess.Popen([BIN / commands["ch-pipeline"][0], *commands["ch-pipeline"][1:]], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        wait_for_checkpoint(checkpoint, server.timepoints[-1], restarted, timeout=120)
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(timeout=60) == 0, restarted.stdout.read()
    land_the_topic(broker.bootstrap_servers, topic_name, db)
    core_build()
    truth = {number: normalise(row) for number, row in expected_core(bulk_rows, served).items()}
    in_kafka = [e for e in served if timepoint_of(e) <= delivered or timepoint_of(e) > server.timepoints[-1] - 50]
    gap = [e for e in served if e not in in_kafka]
    assert gap, "the scenario must have a gap"
    assert core_rows(db) != truth, "the gap's changes are missing before the file"
    assert core_rows(db) == {n: normalise(r) for n, r in expected_core(bulk_rows, in_kafka).items()}

    # 2. The first monthly file dated after the restart (the replay's stream is in January 2026: the
    # February file), published as the register after every event, loaded with the printed command.
    last_published = max(datetime.fromisoformat(e["event"]["published_at"]) for e in served)
    file_date = (last_published.date().replace(day=1) + timedelta(days=32)).replace(day=1)
    files = tmp_path / "published"
    files.mkdir()
    write_register(files / published_name(file_date, ".csv"), expected_core(bulk_rows, served))
    monkeypatch.setenv("CH_BULK_CSV", str(files / "BasicCompanyDataAsOneFile-{file_date}.csv"))
    argv = [part.replace("YYYY-MM-01", file_date.isoformat()) for part in commands["dagster"]]
    loaded = subprocess.run([BIN / argv[0], *argv[1:]], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    core_build()  # the automation's next build (warehouse-side: a newer file in the bulk table is reconciled)
    assert core_rows(db) == truth
