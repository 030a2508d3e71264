"""`ch-pipeline run` killed outright (every process, SIGKILL) and started again: nothing lost, nothing twice.

As users run it: the real command with its in-memory broker, replay server, producer and `dagster dev`
(daemon, Kafka sensor, automation, pools, run monitoring and retries from the project's dagster.yaml).
Before the kill the producer is SIGKILLed too, so the first broker's log holds re-sent events (the case
where re-producing the history from the first event shifted offsets and lost events). After the
restart no test code lands or requests anything: the pipeline converges by itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import psutil
import pytest
from dagster._core.scheduler.instigation import InstigatorType
from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter

from ch_pipeline.companies_house.bulk_csv import SAMPLE_FILE_DATE, published_name, write_sample
from ch_pipeline.companies_house.replay_server import ReplayServer
from ch_pipeline.kafka.broker import free_port
from ch_pipeline.kafka.checkpoint import read_checkpoint
from ch_pipeline.kafka.offsets import probe_offsets
from ch_pipeline.demo_verdict import compare_core
from ch_pipeline.local_stack import LOCAL_SEED

EVENTS, RATE = 1500, 60.0
CONVERGE_SECONDS = 240  # measured ~60-90 s after the restart on 2 cores; generous for a loaded CI machine
IN_FLIGHT = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


class Stack:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.ports = {"--port": free_port(), "--kafka-port": free_port(), "--replay-port": free_port()}
        self.server = ReplayServer(events=EVENTS, seed=LOCAL_SEED)  # the history the command serves (not started)
        self.process: subprocess.Popen | None = None

    @property
    def stream_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['--replay-port']}/companies"

    def start(self, log_name: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "CH_", "DAGSTER_", "DBT_"))}
        env.update(CH_DATA_DIR=str(self.data_dir), CH_BULK_CSV=str(write_sample(self.data_dir.parent / published_name(SAMPLE_FILE_DATE, ".csv"), 2000, seed=5)))
        command = [str(Path(sys.executable).parent / "ch-pipeline"), "run", "--events", str(EVENTS), "--rate", str(RATE),
                   "--sensor-interval", "2", *[str(x) for pair in self.ports.items() for x in pair]]  # fmt: skip
        self.log = self.data_dir.parent / log_name
        self.process = subprocess.Popen(command, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text()

    def kill_everything(self) -> None:
        """SIGKILL the command and every process below it (what a crash of the machine leaves)."""
        root = psutil.Process(self.process.pid)
        for process in [root, *root.children(recursive=True)]:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        self.process.wait(30)

    def kill_producer(self) -> None:
        (producer,) = [p for p in psutil.Process(self.process.pid).children(recursive=True) if "produce" in _command_line(p)]
        producer.send_signal(signal.SIGKILL)

    def checkpoint(self) -> int:
        return read_checkpoint(self.data_dir / "producer.checkpoint", self.stream_url) or 0

    def kafka_ends(self) -> dict[int, int]:
        return probe_offsets({"bootstrap.servers": f"127.0.0.1:{self.ports['--kafka-port']}"}, "company_house", timeout=10)[1]

    def wait(self, what: str, condition, timeout: float) -> float:
        started = time.monotonic()
        while not condition():
            assert self.process.poll() is None, f"ch-pipeline run exited while waiting for {what}:\n{self.output()[-3000:]}"
            assert time.monotonic() - started < timeout, f"not {what} after {timeout}s:\n{self.output()[-3000:]}"
            time.sleep(1.0)
        return time.monotonic() - started


def instance_state(home: Path) -> dict:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        cursor = next((s.instigator_data.cursor for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
                       if s.origin.instigator_name == "company_house_kafka_sensor" and s.instigator_data), None)  # fmt: skip
        records = {r.asset_entry.asset_key.to_user_string(): r.asset_entry for r in instance.get_asset_records(
            [dg.AssetKey("company_house_stream"), dg.AssetKey("company_house_core")])}  # fmt: skip
        stream, core = records.get("company_house_stream"), records.get("company_house_core")
        core_run = instance.get_run_record_by_id(core.last_run_id) if core and core.last_run_id else None
        return {
            "cursor": {int(k): v for k, v in json.loads(cursor).items()} if cursor else {},
            "in_flight": len(instance.get_runs(filters=RunsFilter(statuses=IN_FLIGHT))),
            "last_landing": stream.last_materialization_record.timestamp if stream and stream.last_materialization_record else None,
            "core_built_after_last_landing": bool(
                core_run and core_run.dagster_run.status == DagsterRunStatus.SUCCESS and stream
                and stream.last_materialization_record and core_run.start_time > stream.last_materialization_record.timestamp
            ),
            "core_builds": core_run is not None,
        }  # fmt: skip


@pytest.mark.timeout(900)
def test_run_killed_outright_and_restarted_converges_to_the_truth(tmp_path: Path):
    stack = Stack(tmp_path / "ch-data")
    home = stack.data_dir / "dagster"
    timepoints = stack.server.timepoints
    stack.start("run-1.log")
    try:
        stack.wait("started", lambda: "Ctrl-C stops everything" in stack.output(), 120)  # the instance exists
        stack.wait("built once", lambda: instance_state(home)["core_builds"], 300)
        stack.wait("a third of the history produced", lambda: stack.checkpoint() >= timepoints[EVENTS // 3], 120)
        stack.kill_producer()  # the command restarts it: it re-sends what followed its checkpoint
        stack.wait("the producer restarted", lambda: "restarting it" in stack.output(), 30)
        stack.wait("two thirds produced", lambda: stack.checkpoint() >= timepoints[2 * EVENTS // 3], 120)
    finally:
        stack.kill_everything()

    stack.start("run-2.log")
    try:
        stack.wait("started", lambda: "Ctrl-C stops everything" in stack.output(), 180)
        assert "back at their offsets" in stack.output()

        def converged() -> bool:
            if stack.checkpoint() < timepoints[-1]:
                return False
            state = instance_state(home)
            return state["cursor"] == stack.kafka_ends() and not state["in_flight"] and state["core_built_after_last_landing"]

        seconds = stack.wait("converged", converged, CONVERGE_SECONDS)
        ends = stack.kafka_ends()
        print(f"converged {seconds:.0f}s after the restart; Kafka ends {ends}")
    finally:
        stack.process.send_signal(signal.SIGTERM)
        try:
            stack.process.wait(60)
        except subprocess.TimeoutExpired:
            stack.kill_everything()

    with duckdb.connect(str(stack.data_dir / "warehouse.duckdb"), read_only=True) as con:
        landed = dict(con.execute(
            "select kafka_partition, count(distinct kafka_offset) from (select kafka_partition, kafka_offset from company_house_stream "
            "union all select kafka_partition, kafka_offset from company_house_stream_rejects) group by 1").fetchall())  # fmt: skip
        watermark = dict(con.execute("select kafka_partition, last_offset from get_last_timestamp").fetchall())
    assert landed == ends  # every offset of the new log landed once (distinct count == end)
    assert watermark == {p: end - 1 for p, end in ends.items()}
    result = compare_core(stack.data_dir / "warehouse.duckdb", [json.loads(line) for line in stack.server.lines])
    assert result["counts"]["duplicate (partition, offset)"] == 0
    assert result["mismatched"] == [], f"{len(result['mismatched'])} companies differ from the ground truth"


def _command_line(process: psutil.Process) -> list[str]:
    """A child's command line; empty for one that ended meanwhile (a finished run worker not yet reaped
    is a zombie, whose command line psutil refuses to read)."""
    try:
        return process.cmdline()
    except (psutil.ZombieProcess, psutil.NoSuchProcess):
        return []
