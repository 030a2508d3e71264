"""The Kafka sensor and the ``company_house_stream`` asset (docs/architecture.md §5); the landing,
job and sensor builders here also serve every other stream (``ch_pipeline.defs.streams``).

Exactly once, end to end: a landing is an immutable set of Kafka offset ranges named by its key
(``p0:1200-1349,p1:800-899``). The sensor cuts new ranges and requests one run each, the key as
both its ``run_key`` and its run config, and only in the same ``SensorResult`` advances its
cursor: a tick that dies before the cursor is saved cuts the same keys again next time (same
``run_key``, so Dagster skips runs it already launched, and landing is idempotent anyway).
Nothing is ever committed to Kafka: a run reads its ranges by explicit offsets and replaces
exactly those offsets in the warehouse.

Why the asset is not partitioned by offset range: every landing would add a dynamic partition,
about a million a year, and Dagster's cost for a partitioned asset (status cache, automation tick,
UI pages) grows with its partition count; a landing carried by its run stays the same cost for
ever (docs/architecture.md §14, benchmarks/instance_scale.py). What a partition gave is kept: the
key names the exact ranges, re-executing a run lands exactly its ranges again, and the warehouse
rows record which landing wrote them and when.
"""


import json

import dagster as dg

from ch_pipeline.companies_house.streams import COMPANIES, STREAMS, StreamSpec
from ch_pipeline.defs.metadata import ASSET_GROUP, column_schema
from ch_pipeline.defs.resources import KafkaResource, WarehouseResource
from ch_pipeline.defs.sources import company_house_topic
from ch_pipeline.kafka.offsets import (
    KafkaUnavailable,
    TopicMissing,
    cut_batches,
    format_partition_key,
    next_offsets,
    probe_offsets,
    probe_topic,
)
from ch_pipeline.defs.watch import (
    WATCH_INTERVAL_SECONDS,
    landing_lag_metadata,
    replay_window_check,
    watch_due,
    watch_events,
)
from ch_pipeline.settings import DEFAULT_STREAM_RETENTION_HOURS, sensor_interval_seconds, stream_retention_hours
from ch_pipeline.landing import land_stream_partition
from ch_pipeline.warehouse.landing import LandingSummary
from ch_pipeline.warehouse.schema import CORE_MODEL, STREAM_COLUMNS

DEFAULT_MAX_BATCH_MESSAGES = 100_000
# A run costs ~5 s and 2-3 CPU-seconds here (docs/architecture.md §11): poll every 30 s and batch per tick.
DEFAULT_MINIMUM_INTERVAL_SECONDS = 30
LANDING_MAX_RUNTIME_SECONDS = 600
# A broker that does not answer within this skips the tick (the daemon retries at the next one).
PROBE_TIMEOUT_SECONDS = 5.0
# After a landing, how long its Kafka -> warehouse lag may wait for the end offsets: a slow broker
# costs the run its lag metadata, never the landing.
LAG_PROBE_TIMEOUT_SECONDS = 5.0

# A sensor cuts no new landing while this many runs of its job are queued or running: at a short
# interval a steady stream would otherwise queue a run per tick faster than the duckdb pool serves them
# (each ~8 s of landing and dbt build). Two: one in the pool while the next one starts up beside it.
# The next tick's landing takes everything since, in one run (docs/architecture.md §5, §11).
MAX_RUNS_IN_FLIGHT = 2
# A run queued or running (the automation's "a landing in flight" too, defs/dbt.py).
IN_FLIGHT_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]

# The run tag naming a landing's offset ranges: filter the Runs page by it to find who landed an offset.
OFFSETS_TAG = "ch/offsets"


def ticks_every(seconds: int) -> int:
    """The ``minimum_interval_seconds`` of a sensor meant to tick every ``seconds``. The daemon looks
    for due sensors every 5 s, and a tick is due once the interval has passed since the previous tick
    started: at the look exactly 10 s later, 9.99 s had passed, so an interval of 10 ticked every 15 s
    (measured: docs/architecture.md §11). A second of slack, and it ticks every 10."""
    return max(1, seconds - 1)


class StreamLanding(dg.Config):
    """The offset ranges one run lands, e.g. ``p0:1200-1349,p1:800-899`` (set by the sensor; to land
    a range again, re-execute its run, or launch the job with the ranges from the warehouse's
    ``stream_partition`` column)."""

    offsets: str


def landing_run_config(offsets: str, asset_name: str = "company_house_stream") -> dg.RunConfig:
    """The run config of a landing of ``asset_name`` (a stream's ``landing_table``)."""
    return dg.RunConfig(ops={asset_name: StreamLanding(offsets=offsets)})


def land_stream(
    context: dg.AssetExecutionContext, stream: StreamSpec, offsets: str, kafka: KafkaResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """The body of every stream's landing asset: read the offsets, land them, report what landed."""
    # The read streams into the warehouse's open landing transaction (DuckDB: the file is held while
    # Kafka is read; this op already holds the duckdb pool's slot, so no other writer waits longer).
    landed = land_stream_partition(kafka.client_config(), kafka.topic_of(stream.name), offsets, warehouse.warehouse(), stream)
    if landed.rejects:
        context.log.warning(f"{landed.rejects} unparseable messages landed in {stream.rejects_table}")
    return dg.MaterializeResult(metadata={**landing_metadata(landed), **kafka_lag(context, kafka, stream, landed)})


def kafka_lag(context: dg.AssetExecutionContext, kafka: KafkaResource, stream: StreamSpec, batch: LandingSummary) -> dict:
    """Kafka -> warehouse lag once the landing has committed (``defs.watch.landing_lag_metadata``);
    nothing when the broker does not answer in time: the landing itself is done and must not fail."""
    try:
        _, ends = probe_offsets(kafka.client_config(), kafka.topic_of(stream.name), timeout=LAG_PROBE_TIMEOUT_SECONDS)
    except (KafkaUnavailable, TopicMissing) as exc:
        context.log.warning(f"no Kafka -> warehouse lag for this landing: {exc}")
        return {}
    return landing_lag_metadata(batch.ranges, ends, batch.newest_kafka_timestamp)


@dg.asset(
    name="company_house_stream",
    deps=[company_house_topic],
    pool="duckdb",  # one DuckDB writer at a time (docs/architecture.md §11)
    group_name=ASSET_GROUP,
    kinds={"kafka", "python"},
    description="Every Kafka message of the topic as a typed row, landed exactly once per offset. "
    "Each run lands the offset ranges its config names (p0:1200-1349,p1:800-899, also its run key and "
    "its ch/offsets tag); re-executing a run replaces exactly its rows. Unparseable messages go to "
    "company_house_stream_rejects.",
    metadata=column_schema(STREAM_COLUMNS),
)
def company_house_stream(
    context: dg.AssetExecutionContext, config: StreamLanding, kafka: KafkaResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    return land_stream(context, STREAMS[COMPANIES], config.offsets, kafka, warehouse)


def build_landing_job(asset: dg.AssetsDefinition, stream: StreamSpec, then_build: dg.AssetSelection | None = None, priority: int = 0):
    """The job a stream's sensor launches, named ``stream.landing_job``: its landing asset, and
    ``then_build`` (the models the landing feeds) when the sensor asks for them in the same run. Runs of
    a higher ``priority`` leave the queue and take the duckdb pool first."""
    return dg.define_asset_job(
        stream.landing_job,
        selection=dg.AssetSelection.assets(asset) | then_build if then_build else [asset],
        # The landing runs are small and frequent: one process per run instead of another per step
        # saves ~2 s and a CPU-second of each (docs/architecture.md §11).
        executor_def=dg.in_process_executor,
        # A landing takes seconds (plus at most one other run's turn in the duckdb pool): a run still
        # STARTED after this is one whose worker died unseen (with its code server), and run monitoring
        # fails it so that run retries land its offsets again.
        tags={"dagster/max_runtime": str(LANDING_MAX_RUNTIME_SECONDS), "dagster/priority": str(priority)},
    )


# The companies landing builds the core after it, in the same run (docs/architecture.md §7): the
# models of the core's dbt build, one execution set (defs/dbt.py), found from the core.
CORE_BUILD = dg.AssetSelection.assets(CORE_MODEL).required_multi_asset_neighbors()
# Its runs go first: the core is the table with a freshness promise, the other streams' models have none
# yet, and their landings of a round would otherwise hold a companies run up to eight turns in the pool.
company_house_stream_job = build_landing_job(company_house_stream, STREAMS[COMPANIES], then_build=CORE_BUILD, priority=1)


def core_is_built(instance: dg.DagsterInstance) -> bool:
    """Whether the core has been built: its first build (from the bulk file, requested by the automation
    once one is loaded) is the automation's alone; a landing run that built too would be a second build
    of the whole bulk snapshot beside it."""
    return instance.get_latest_materialization_event(dg.AssetKey(CORE_MODEL)) is not None


def landing_request(offsets: str, asset_name: str = "company_house_stream", landing_only: bool = False) -> dg.RunRequest:
    """A run landing ``offsets``: the whole job (the landing, then what it feeds), or ``landing_only``."""
    return dg.RunRequest(
        run_key=offsets,
        run_config=landing_run_config(offsets, asset_name),
        tags={OFFSETS_TAG: offsets},
        asset_selection=[dg.AssetKey(asset_name)] if landing_only else None,
    )


def landing_requests(batches: list, asset_name: str, build: bool) -> list[dg.RunRequest]:
    """One run per batch; only the last one also builds what the landings feed (when ``build``): a
    backlog cut into many batches costs one build, and a build sees every landing before it (runs
    start in the order requested and take turns in the duckdb pool; a landing that lands later, a
    retry, is picked up by the automation, defs/dbt.py)."""
    last = len(batches) - 1
    return [landing_request(format_partition_key(b), asset_name, landing_only=not build or i < last) for i, b in enumerate(batches)]


def runs_in_flight(instance: dg.DagsterInstance, job_name: str) -> int:
    """How many runs of ``job_name`` are queued or running (retries included: they are runs of the job)."""
    return instance.get_runs_count(dg.RunsFilter(job_name=job_name, statuses=IN_FLIGHT_STATUSES))


def landing_metadata(batch: LandingSummary) -> dict[str, dg.MetadataValue]:
    metadata: dict[str, dg.MetadataValue] = {
        "dagster/row_count": dg.MetadataValue.int(batch.rows),
        "landing": dg.MetadataValue.text(batch.stream_partition),
        "rows": dg.MetadataValue.int(batch.rows),
        "rejects": dg.MetadataValue.int(batch.rejects),
        "offsets": dg.MetadataValue.json({f"p{r.partition}": [r.first, r.last] for r in batch.ranges}),
        "bytes": dg.MetadataValue.int(batch.message_bytes),
    }
    if batch.min_published_at is not None:
        metadata["min_published_at"] = dg.MetadataValue.timestamp(batch.min_published_at)
    if batch.max_published_at is not None:
        metadata["max_published_at"] = dg.MetadataValue.timestamp(batch.max_published_at)
    return metadata


def read_cursor(cursor: str | None) -> dict[int, int]:
    """The sensor cursor: next offset to cut per Kafka partition, JSON ``{"0": 1350, "1": 900}``."""
    if not cursor:
        return {}
    try:
        return {int(partition): int(offset) for partition, offset in json.loads(cursor).items()}
    except (ValueError, AttributeError, TypeError) as exc:
        raise ValueError(
            f"sensor cursor {cursor!r} is not JSON {{kafka_partition: next_offset}}: set a valid one in the UI"
        ) from exc


def write_cursor(offsets: dict[int, int]) -> str:
    return json.dumps({str(partition): offset for partition, offset in sorted(offsets.items())})


def build_kafka_sensor(
    max_batch_messages: int = DEFAULT_MAX_BATCH_MESSAGES,
    minimum_interval_seconds: int = DEFAULT_MINIMUM_INTERVAL_SECONDS,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    probe_timeout_seconds: float = PROBE_TIMEOUT_SECONDS,
    stream: StreamSpec = STREAMS[COMPANIES],
    job=company_house_stream_job,  # a build_landing_job job
    retention_hours: int = DEFAULT_STREAM_RETENTION_HOURS,
    watch_interval_seconds: float = WATCH_INTERVAL_SECONDS,
    build_ready=None,  # (instance) -> bool, for a job that also builds what the landing feeds
    max_runs_in_flight: int = MAX_RUNS_IN_FLIGHT,
) -> dg.SensorDefinition:
    """The sensor that turns new Kafka offsets of ``stream``'s topic into runs of ``job`` (which lands
    them into ``stream.landing_table``); named ``stream.kafka_sensor``.
    When ``build_ready`` says so, a tick's last run also builds the rest of ``job`` (the companies
    core); otherwise every run is the landing alone. While ``max_runs_in_flight`` runs of ``job`` are
    queued or running, a tick cuts nothing (its cursor stays): the next one lands everything since.

    At most once per ``watch_interval_seconds`` it also reports the stream's watches on its topic
    asset, from the same probe (``defs.watch``): lag and replay window against ``retention_hours``."""

    @dg.sensor(
        name=stream.kafka_sensor,
        job=job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=f"Polls the Kafka topic; cuts new offsets into landings of at most {max_batch_messages} messages.",
    )
    def kafka_sensor(context: dg.SensorEvaluationContext, kafka: KafkaResource) -> dg.SensorResult | dg.SkipReason:
        cursor = read_cursor(context.cursor)
        topic = kafka.topic_of(stream.name)
        try:
            probe = probe_topic(kafka.client_config(), topic, timeout=probe_timeout_seconds)
        except (KafkaUnavailable, TopicMissing) as exc:
            return dg.SkipReason(str(exc))
        lows, ends = probe.lows, probe.ends
        due = watch_due(context.last_tick_completion_time, watch_interval_seconds)
        watched = watch_events(stream, probe, retention_hours) if due else []
        starts = {}
        for partition, low in lows.items():
            # A new Kafka partition (or a first tick) starts at its first retained offset.
            starts[partition] = max(cursor.get(partition, low), low)
            if cursor.get(partition, low) < low:
                context.log.warning(
                    f"Kafka partition {partition}: offsets {cursor[partition]}-{low - 1} were deleted by retention "
                    "before they were landed; continuing from the first retained offset"
                )
            if cursor.get(partition, 0) > ends[partition]:
                context.log.warning(
                    f"Kafka partition {partition} ends at {ends[partition]}, before the cursor's {cursor[partition]}: "
                    "was the topic recreated? Reset the sensor cursor to land the new messages"
                )
        batches = cut_batches(starts, ends, max_batch_messages)
        in_flight = runs_in_flight(context.instance, job.name) if batches else 0
        if in_flight >= max_runs_in_flight:
            return dg.SensorResult(
                skip_reason=f"{in_flight} runs of {job.name} queued or running: the next tick lands the new messages",
                cursor=write_cursor({**cursor, **starts}),
                asset_events=watched,
            )
        if not batches:
            return dg.SensorResult(
                skip_reason=f"no new messages in {topic} (next offsets {write_cursor(starts)})",
                cursor=write_cursor({**cursor, **starts}),
                asset_events=watched,
            )
        return dg.SensorResult(
            run_requests=landing_requests(batches, stream.landing_table, build=build_ready is not None and build_ready(context.instance)),
            cursor=write_cursor({**cursor, **starts, **next_offsets(batches)}),
            asset_events=watched,
        )

    return kafka_sensor


company_house_kafka_sensor = build_kafka_sensor(
    minimum_interval_seconds=ticks_every(sensor_interval_seconds(DEFAULT_MINIMUM_INTERVAL_SECONDS)),
    retention_hours=stream_retention_hours(),
    build_ready=core_is_built,
)
# The companies topic's replay window, also reported by company_house_kafka_sensor (defs.watch).
company_house_topic_replay_window = replay_window_check(STREAMS[COMPANIES], stream_retention_hours(), PROBE_TIMEOUT_SECONDS)
