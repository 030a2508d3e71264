"""The crash-matrix harness: one fixed generated history run through the real pipeline, faults, catch-up.

A ``Pipeline`` is one scenario's whole world: the replay server serving a fixed history (seed), a
fresh topic of two partitions on the real broker, a DuckDB file with the bulk snapshot already
loaded, and a real Dagster instance. Its steps are the daemon's and the producer's, in-process:
``produce_all`` (the real ``StreamProducer``), ``tick`` (the real Kafka sensor), ``land`` (a real
run of ``company_house_stream``), ``dbt`` (a real run of ``ch_dbt_models``). A fault is injected
between or inside these steps, usually by SIGKILLing a child process (``faulty_producer.py``,
``faulty_landing.py``, a ``dbt`` process), and then ``catch_up`` does what the running pipeline
would do next and measures the result against the ground truth computed in Python from the
served events (``ch_pipeline.demo_verdict.expected_core``: the bulk rows, then each company's newest
event) and against Kafka itself (every offset landed exactly once).

What recovery assumes (the same as production): the producer is restarted (it resumes from its
checkpoint), a landing run that died is re-executed (Dagster's run retries, or "Re-execute" on the run
in the UI: ``land_missing``), and the next dbt build runs the whole model selection.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import duckdb

from ch_pipeline.companies_house.replay_server import ReplayServer
from ch_pipeline.companies_house.stream_client import Backoff, CompaniesHouseStream
from ch_pipeline.defs.resources import KafkaResource, WarehouseResource
from ch_pipeline.defs.stream import build_kafka_sensor, company_house_stream, landing_run_config
from ch_pipeline.kafka.checkpoint import read_checkpoint
from ch_pipeline.kafka.producer import StreamProducer
from ch_pipeline.demo_verdict import COMPARED_COLUMNS, expected_core, normalise
from ch_pipeline.warehouse.schema import REJECTS_TABLE, STREAM_TABLE
from ch_pipeline_tests.support.kafka import read_topic
from ch_pipeline_tests.support.producer import producer_env

HERE = Path(__file__).resolve().parent
TOPIC_PARTITIONS = 2
HISTORY_EVENTS = 400  # distinct events; the generator adds ~3 % duplicates (the API re-sends events)
DEFAULT_SEED = 9
FULL_SEEDS = (9, 10, 11, 12)
BULK_COMPANIES = 2_000
# Small batches, so one tick cuts several landings and a landing fault hits one of many.
MAX_BATCH_MESSAGES = 120
# The fault points of each component. The default run chains a component's points in one scenario
# (one catch-up: the CI budget); --reliability-full gives each point its own scenario, over more seeds.
PRODUCER_FAULTS = ("before_delivery_report", "after_delivery_report", "between_delivery_and_checkpoint")
LANDING_FAULTS = ("landing_before_write", "landing_during_write", "landing_after_write")
# (fault point, the last model that committed before the kill)
DBT_FAULTS = (("between snapshot and core", "company_house_deletions"), ("between core and watermark", "company_house_core"))
DBT_MODEL_ORDER = ("snapshot_streamed_data", "company_house_deletions", "company_house_core", "get_last_timestamp")
STREAM_ASSET = dg.AssetKey("company_house_stream")
MAX_UNANSWERED_TICKS = 3


class KafkaDidNotAnswer(AssertionError):
    """The Kafka sensor kept skipping its ticks: the broker did not answer its offset probe."""


def fast_backoff() -> Backoff:
    return Backoff(initial=0.02, cap=0.2)


@dataclass
class Outcome:
    """What one scenario ended with, compared with the ground truth."""

    fault_point: str
    events_served: int
    kafka_messages: int
    landed: int  # distinct (partition, offset) in the stream and rejects tables
    core_rows: int
    expected_rows: int
    duplicates: int  # (partition, offset) held more than once in the stream table
    lost: int  # companies whose core row differs from (or is missing against) the ground truth
    watermark_regressions: list[str]
    dbt_runs: int

    @property
    def exact(self) -> bool:
        return (
            self.duplicates == 0
            and self.lost == 0
            and self.core_rows == self.expected_rows
            and self.landed == self.kafka_messages
            and not self.watermark_regressions
        )


OUTCOMES: list[Outcome] = []  # printed as a table at the end of the session (conftest)


@dataclass
class Pipeline:
    root: Path
    bootstrap_servers: str
    topic: str
    server: ReplayServer
    instance: dg.DagsterInstance
    db: Path
    cursor: str | None = None
    watermarks: list[dict[int, int]] = field(default_factory=list)
    dbt_runs: int = 0
    last_skip_reason: str | None = None
    # Every landing key the sensor requested, in order (the daemon would keep them as its runs).
    requested: list[str] = field(default_factory=list)

    @property
    def kafka(self) -> KafkaResource:
        return KafkaResource(bootstrap_servers=self.bootstrap_servers, topic=self.topic)

    @property
    def warehouse(self) -> WarehouseResource:
        return WarehouseResource(duckdb_path=str(self.db))

    @property
    def checkpoint_path(self) -> Path:
        return self.root / "producer.checkpoint"

    @property
    def served(self) -> list[dict]:
        return [json.loads(line) for line in self.server.lines]

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a child process of this scenario (producer, landing run)."""
        return producer_env(self.server.url, self.bootstrap_servers, self.topic, self.checkpoint_path,
                            CH_DUCKDB_PATH=str(self.db), CH_WAREHOUSE="duckdb", **extra)  # fmt: skip

    # --- producer ---------------------------------------------------------------------------

    def remaining_after_checkpoint(self) -> int:
        checkpoint = read_checkpoint(self.checkpoint_path, self.server.url)
        return sum(checkpoint is None or tp > checkpoint for tp in self.server.timepoints)

    def produce_all(self, backoff: Backoff | None = None, at_most: int | None = None) -> None:
        """The real producer, in-process, from the checkpoint to the last served event (or ``at_most`` events)."""
        remaining = self.remaining_after_checkpoint()
        if at_most is not None:
            remaining = min(remaining, at_most)
        if not remaining:
            return
        stream = CompaniesHouseStream(
            self.server.url, timepoint=read_checkpoint(self.checkpoint_path, self.server.url),
            backoff=backoff or fast_backoff(), read_timeout=5,
        )  # fmt: skip
        producer = StreamProducer(stream, {"bootstrap.servers": self.bootstrap_servers}, self.topic, self.checkpoint_path, remaining)
        result = producer.run(threading.Event())
        assert result.delivered == remaining and result.delivery_errors == 0, result

    # --- Kafka sensor and landing ----------------------------------------------------------

    def tick(self, save_cursor: bool = True) -> list[str] | None:
        """One evaluation of the real Kafka sensor; the keys it requested are remembered as the daemon keeps its runs.

        The keys of the runs it requests; None when it skipped because Kafka did not answer.
        """
        sensor = build_kafka_sensor(max_batch_messages=MAX_BATCH_MESSAGES)
        result = sensor(dg.build_sensor_context(instance=self.instance, cursor=self.cursor, resources={"kafka": self.kafka}))
        if not isinstance(result, dg.SensorResult):
            self.last_skip_reason = result.skip_message
            return None
        if not result.run_requests:
            if save_cursor and result.cursor:
                self.cursor = result.cursor
            return []
        keys = [request.run_key for request in result.run_requests]
        self.requested.extend(key for key in keys if key not in self.requested)
        if save_cursor:
            self.cursor = result.cursor
        return keys

    def land(self, key: str, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [company_house_stream], run_config=landing_run_config(key), instance=self.instance,
            resources={"kafka": self.kafka, "warehouse": self.warehouse}, raise_on_error=raise_on_error,
        )  # fmt: skip

    def missing_landings(self) -> list[str]:
        """Requested landings that no run completed (each completed landing's key is in its materialization)."""
        landed = {record.asset_materialization.metadata["landing"].value
                  for record in self.instance.fetch_materializations(STREAM_ASSET, limit=10_000).records}  # fmt: skip
        return [key for key in self.requested if key not in landed]

    def land_missing(self) -> None:
        """Re-execute every requested landing without a materialization (a run that died or failed)."""
        for key in self.missing_landings():
            self.land(key)

    # --- dbt --------------------------------------------------------------------------------

    def dbt(self) -> None:
        """A real run of the dbt assets, the whole selection (what the automation sensor requests)."""
        from ch_pipeline.defs.dbt import ch_dbt_models, dbt_resource

        assert dg.materialize([ch_dbt_models], resources={"dbt": dbt_resource()}, instance=self.instance).success
        self.dbt_runs += 1
        self.record_watermark()

    def dbt_killed_after(self, model: str) -> int:
        """``dbt build`` of the models up to ``model``, SIGKILLed once its log reports ``model`` done.

        The selection stops at ``model``, so the crash point is exact: every model before it has
        committed, every model after it has not run (the state a kill at that instant leaves).
        """
        from ch_pipeline.defs.dbt import DBT_PROJECT_DIR, dbt_executable

        selection = DBT_MODEL_ORDER[: DBT_MODEL_ORDER.index(model) + 1]
        # Cautious: no test that also reads a model after the crash point (it would judge a state
        # the full build never shows; the full build's own tests run in catch_up).
        command = [dbt_executable(), "--log-format", "json", "build", "--select", *selection, "--indirect-selection", "cautious",
                   "--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR),
                   "--target-path", str(self.root / "dbt-target")]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=DBT_PROJECT_DIR)
        finished, output = False, []
        for line in process.stdout:
            output.append(line)
            if _model_finished(line, model):
                finished = True
                process.kill()
                break
        process.wait(timeout=120)
        process.stdout.close()
        assert finished, f"dbt never reported {model} as done (exit {process.returncode}):\n" + _dbt_messages(output)
        self.record_watermark()
        return process.returncode

    def record_watermark(self) -> None:
        with duckdb.connect(str(self.db), read_only=True) as con:
            exists = con.execute("select count(*) from information_schema.tables where table_name = 'get_last_timestamp'").fetchone()[0]
            rows = con.execute("select kafka_partition, last_offset from get_last_timestamp").fetchall() if exists else []
        self.watermarks.append(dict(rows))

    def watermark_regressions(self) -> list[str]:
        regressions = []
        for before, after in zip(self.watermarks, self.watermarks[1:]):
            for partition, offset in before.items():
                if after.get(partition, -1) < offset:
                    regressions.append(f"partition {partition}: {offset} -> {after.get(partition)}")
        return regressions

    # --- catching up and measuring ----------------------------------------------------------

    def land_everything_new(self) -> None:
        """Ticks and their runs until a tick finds nothing new. A tick that skipped because Kafka did
        not answer in time (seen right after a broker restart) is followed by another, as the daemon's."""
        unanswered = 0
        while (keys := self.tick()) != []:
            if keys is None:
                unanswered += 1
                if unanswered > MAX_UNANSWERED_TICKS:
                    raise KafkaDidNotAnswer(f"{unanswered} sensor ticks in a row skipped: {self.last_skip_reason}")
                continue
            for key in keys:
                self.land(key)

    def catch_up(self, fault_point: str) -> Outcome:
        """What the pipeline does after a fault: new ticks, the dead runs re-executed, a dbt build."""
        self.land_everything_new()
        self.land_missing()
        self.dbt()
        outcome = self.measure(fault_point)
        OUTCOMES.append(outcome)
        return outcome

    def measure(self, fault_point: str) -> Outcome:
        # The ground truth is demo_verdict's (bulk baseline + each company's newest served event);
        # its compare_core is not reused because it calls Relation.fetchone(), gone in DuckDB 2.0.
        with duckdb.connect(str(self.db), read_only=True) as con:
            bulk = _rows_by_number(con, "company_house_bulk")
            core = _rows_by_number(con, "company_house_core")
            landed = con.execute(
                f"select count(*) from (select kafka_partition, kafka_offset from {STREAM_TABLE} "
                f"union select kafka_partition, kafka_offset from {REJECTS_TABLE})"
            ).fetchone()[0]
            duplicates = con.execute(
                f"select count(*) from (select kafka_partition, kafka_offset from {STREAM_TABLE} group by all having count(*) > 1)"
            ).fetchone()[0]
        expected = expected_core(bulk, self.served)
        differing = [n for n in expected.keys() | core.keys() if n not in core or n not in expected or normalise(core[n]) != normalise(expected[n])]
        return Outcome(
            fault_point=fault_point,
            events_served=len(self.server.lines),
            kafka_messages=len(read_topic(self.bootstrap_servers, self.topic, TOPIC_PARTITIONS)),
            landed=landed,
            core_rows=len(core),
            expected_rows=len(expected),
            duplicates=duplicates,
            lost=len(differing),
            watermark_regressions=self.watermark_regressions(),
            dbt_runs=self.dbt_runs,
        )

    def stream_rows(self) -> list[tuple]:
        with duckdb.connect(str(self.db), read_only=True) as con:
            return con.execute(f"select kafka_partition, kafka_offset, raw_event from {STREAM_TABLE} order by 1, 2").fetchall()


def _rows_by_number(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, dict]:
    columns = ("company_number", *COMPARED_COLUMNS)
    rows = con.execute(f"select {', '.join(columns)} from {table}").fetchall()
    return {row[0]: dict(zip(columns, row)) for row in rows}


def _model_finished(log_line: str, model: str) -> bool:
    """dbt's JSON log: a ``LogModelResult`` event names the model once it has committed."""
    try:
        event = json.loads(log_line)
    except ValueError:
        return False
    if event.get("info", {}).get("name") != "LogModelResult":
        return False
    node = event.get("data", {}).get("node_info", {})
    # ``status`` is the adapter's response ("OK" on DuckDB), or "error".
    return node.get("node_name") == model and event["data"].get("status") != "error"


def _dbt_messages(log_lines: list[str]) -> str:
    messages = []
    for line in log_lines:
        try:
            messages.append(json.loads(line)["info"]["msg"])
        except (ValueError, KeyError, TypeError):
            messages.append(line.rstrip())
    return "\n".join(messages[-30:])


def assert_exact(outcome: Outcome) -> None:
    assert outcome.exact, outcome


# --- child processes that die at a chosen point --------------------------------------------


def run_until_killed(command: list[str], env: dict[str, str], log: Path, timeout: float = 120) -> int:
    """Run a child that is expected to SIGKILL itself at its fault point; its exit code."""
    with log.open("w") as out:
        process = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    return process.returncode


def faulty_producer(pipeline: Pipeline, fault_point: str, after_deliveries: int) -> int:
    return run_until_killed(
        [sys.executable, str(HERE / "faulty_producer.py")],
        pipeline.env(CH_FAULT_POINT=fault_point, CH_FAULT_AFTER_DELIVERIES=str(after_deliveries)),
        pipeline.root / f"producer-{fault_point}.log",
    )  # fmt: skip


def faulty_landing(pipeline: Pipeline, key: str, fault_point: str) -> int:
    return run_until_killed(
        [sys.executable, str(HERE / "faulty_landing.py"), key], pipeline.env(CH_FAULT_POINT=fault_point),
        pipeline.root / f"landing-{fault_point}.log",
    )  # fmt: skip


def copy_warehouse(template: Path, root: Path) -> Path:
    db = root / "warehouse.duckdb"
    shutil.copyfile(template, db)
    return db


def format_outcomes(outcomes: list[Outcome]) -> str:
    header = ("fault point", "events served", "Kafka messages", "landed offsets", "core rows", "expected rows",
              "duplicates", "lost", "watermark regressions", "dbt runs")  # fmt: skip
    rows = [
        (o.fault_point, o.events_served, o.kafka_messages, o.landed, o.core_rows, o.expected_rows,
         o.duplicates, o.lost, len(o.watermark_regressions), o.dbt_runs)  # fmt: skip
        for o in outcomes
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)

