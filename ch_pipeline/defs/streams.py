"""Every Companies House stream but companies, landed like companies: generated from the catalogue.

Per stream (``ch_pipeline.companies_house.streams.STREAMS``), in its own asset group named after its
catalogue topic (``company_house_officers``, ...), so the lineage page shows each stream on its own:

- ``<topic>_streaming_api`` and ``<topic>_topic``: external assets, the endpoint and the Kafka topic
  the producer feeds (``ch-pipeline produce --stream NAME``; topic name from ``KAFKA_TOPIC_<STREAM>``);
- ``<topic>_stream`` (= ``spec.landing_table``): the landing asset, exactly the companies landing
  (``defs.stream.land_stream``: runs carry their offset ranges as run config, no partitions) with
  the envelope parser and the stream's table; unparseable messages go to ``spec.rejects_table``;
- ``<topic>_stream:timepoints_contiguous``: the completeness check, run in every landing run;
- ``<topic>_topic:replay_window``: the producer checkpoint's age against the API's retention,
  reported by the sensor with the topic's lag observations (``defs.watch``);
- ``<topic>_stream_job`` and ``<topic>_kafka_sensor`` (``spec.landing_job``, ``spec.kafka_sensor``):
  the job and the sensor that launches it for new offsets (``defs.stream.build_kafka_sensor``).

Companies keeps its own module (``defs.stream``, ``defs.sources``) and its names.
"""

from dataclasses import dataclass
from typing import Any

import dagster as dg

from ch_pipeline.companies_house.streams import COMPANIES, STREAMS, StreamSpec
from ch_pipeline.defs.metadata import column_schema
from ch_pipeline.defs.resources import KafkaResource, WarehouseResource
from ch_pipeline.defs.stream import (
    PROBE_TIMEOUT_SECONDS,
    StreamLanding,
    build_kafka_sensor,
    build_landing_job,
    land_stream,
    ticks_every,
)
from ch_pipeline.defs.watch import replay_window_check
from ch_pipeline.settings import stream_retention_hours, streams_sensor_interval_seconds
from ch_pipeline.warehouse.schema import landing_columns

OTHER_STREAMS = [spec for spec in STREAMS.values() if spec.name != COMPANIES]
# Each stream's sensor polls every 2 minutes unless CH_STREAMS_SENSOR_INTERVAL_SECONDS says otherwise:
# eight streams polled like companies (30 s) would launch a landing run every 4 s on average.
STREAMS_MINIMUM_INTERVAL_SECONDS = 120


def stream_group(spec: StreamSpec) -> str:
    """The asset group of a stream: its catalogue topic (companies' is ``company_house``)."""
    return spec.default_topic


def streaming_api_spec(spec: StreamSpec) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=f"{spec.default_topic}_streaming_api",
        description=f"Companies House streaming API, {spec.path} ({', '.join(spec.resource_kinds)}; "
        "HTTP long-lived NDJSON, resumable by timepoint).",
        group_name=stream_group(spec),
        kinds={"api"},
        metadata={"url": f"https://stream.companieshouse.gov.uk{spec.path}"},
    )


def topic_spec(spec: StreamSpec, api: dg.AssetSpec) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=f"{spec.default_topic}_topic",
        description=f"Kafka topic of {spec.path} (default {spec.default_topic}, KAFKA_TOPIC_{spec.env_suffix}): "
        f"one message per event, value = the event JSON as served. Fed by `ch-pipeline produce --stream {spec.name}`.",
        group_name=stream_group(spec),
        kinds={"kafka"},
        deps=[api],
    )


def landing_asset(spec: StreamSpec, topic: dg.AssetSpec) -> dg.AssetsDefinition:
    @dg.asset(
        name=spec.landing_table,
        deps=[topic],
        pool="duckdb",  # one DuckDB writer at a time (docs/architecture.md §11)
        group_name=stream_group(spec),
        kinds={"kafka", "python"},
        description=f"Every Kafka message of the {spec.path} topic as a row (item: {spec.item}), landed exactly "
        "once per offset. Each run lands the offset ranges its config names (also its run key and ch/offsets "
        f"tag); re-executing a run replaces exactly its rows. Unparseable messages go to {spec.rejects_table}.",
        metadata=column_schema(landing_columns(spec)),
    )
    def landing(
        context: dg.AssetExecutionContext, config: StreamLanding, kafka: KafkaResource, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        return land_stream(context, spec, config.offsets, kafka, warehouse)

    return landing


COMPLETENESS_CHECK = "timepoints_contiguous"


def describe_gaps(gaps: list[tuple[int, int]]) -> str:
    """``[(101, 103), (250, 250)]`` -> ``101-103, 250``."""
    return ", ".join(str(first) if first == last else f"{first}-{last}" for first, last in gaps)


def completeness_check(spec: StreamSpec, asset: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    """Timepoints increase by one within a stream, so a missing one is an event the warehouse never
    got (lost before Kafka, or rejected). The check runs in each landing run, after the landing."""

    @dg.asset_check(
        asset=asset,
        name=COMPLETENESS_CHECK,
        pool="duckdb",  # it reads the DuckDB file, which one process at a time may open
        description=f"Every timepoint of {spec.path} between the first and the last landed is in "
        f"{spec.landing_table} (server duplicates aside); a gap fails, naming the missing range.",
    )
    def timepoints_contiguous(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        coverage = warehouse.warehouse().timepoint_coverage(spec)
        metadata = {
            "first_timepoint": dg.MetadataValue.int(coverage.first if coverage.first is not None else -1),
            "last_timepoint": dg.MetadataValue.int(coverage.last if coverage.last is not None else -1),
            "missing_timepoints": dg.MetadataValue.int(coverage.missing),
            "gaps": dg.MetadataValue.json([list(gap) for gap in coverage.gaps]),
        }
        if coverage.first is None:
            return dg.AssetCheckResult(passed=True, description="nothing landed yet", metadata=metadata)
        if not coverage.gaps:
            description = f"timepoints {coverage.first}-{coverage.last} all landed"
            return dg.AssetCheckResult(passed=True, description=description, metadata=metadata)
        description = f"missing timepoints {describe_gaps(coverage.gaps)} (of {coverage.first}-{coverage.last})"
        return dg.AssetCheckResult(passed=False, description=description, metadata=metadata)

    return timepoints_contiguous


@dataclass(frozen=True)
class StreamLandingDefs:
    """What one stream adds to the code location."""

    api: dg.AssetSpec
    topic: dg.AssetSpec
    asset: dg.AssetsDefinition
    check: dg.AssetChecksDefinition
    replay_window: dg.AssetChecksDefinition  # on the topic
    job: Any  # the UnresolvedAssetJobDefinition of build_landing_job
    sensor: dg.SensorDefinition

    def definitions(self) -> dg.Definitions:
        return dg.Definitions(
            assets=[self.api, self.topic, self.asset], asset_checks=[self.check, self.replay_window], jobs=[self.job], sensors=[self.sensor]
        )


def stream_landing_defs(spec: StreamSpec) -> StreamLandingDefs:
    api = streaming_api_spec(spec)
    topic = topic_spec(spec, api)
    asset = landing_asset(spec, topic)
    check = completeness_check(spec, asset)
    retention_hours = stream_retention_hours()
    replay_window = replay_window_check(spec, retention_hours, PROBE_TIMEOUT_SECONDS)
    job = build_landing_job(asset, spec)
    sensor = build_kafka_sensor(
        minimum_interval_seconds=ticks_every(streams_sensor_interval_seconds(STREAMS_MINIMUM_INTERVAL_SECONDS)), stream=spec, job=job,
        retention_hours=retention_hours,
    )  # fmt: skip
    return StreamLandingDefs(api, topic, asset, check, replay_window, job, sensor)


# Each stream's definitions by stream name (tests take a stream's asset, job and sensor from here).
STREAM_LANDINGS = {spec.name: stream_landing_defs(spec) for spec in OTHER_STREAMS}
# The one Definitions object of this module: dg.load_from_defs_folder takes it as the module's definitions.
defs = dg.Definitions.merge(*(landing.definitions() for landing in STREAM_LANDINGS.values()))
