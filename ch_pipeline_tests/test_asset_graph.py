"""A snapshot of the asset graph: an accidental change to keys, lineage or partitioning fails here."""

from __future__ import annotations

import dagster as dg

from ch_pipeline.companies_house.streams import STREAMS
from ch_pipeline.definitions import defs

# Every stream but companies: API -> topic -> landing, in a group named by its topic (ch_pipeline.defs.streams).
OTHER_TOPICS = [spec.default_topic for spec in STREAMS.values() if spec.name != "companies"]
OTHER_STREAMS_LINEAGE, OTHER_STREAMS_GROUP = {}, {}
for topic in OTHER_TOPICS:
    OTHER_STREAMS_LINEAGE |= {
        f"{topic}_streaming_api": set(),
        f"{topic}_topic": {f"{topic}_streaming_api"},
        f"{topic}_stream": {f"{topic}_topic"},
    }
    OTHER_STREAMS_GROUP |= {f"{topic}_{suffix}": topic for suffix in ("streaming_api", "topic", "stream")}

# asset -> its upstream assets, as the lineage graph shows them
EXPECTED_LINEAGE = {
    "company_house_streaming_api": set(),
    "company_house_topic": {"company_house_streaming_api"},
    "company_house_stream": {"company_house_topic"},
    "company_house_bulk": set(),
    "snapshot_streamed_data": {"company_house_stream"},
    "company_house_deletions": {"snapshot_streamed_data", "company_house_stream"},
    "company_house_core": {"snapshot_streamed_data", "company_house_deletions", "company_house_stream", "company_house_bulk"},
    "get_last_timestamp": {"snapshot_streamed_data", "company_house_core"},
    "company_house_bulk_reconciliations": {"company_house_core"},
    **OTHER_STREAMS_LINEAGE,
}
# Issue 15: per stream its landing table -> its current-state model; the overview reads the core and five of them.
STREAM_MODELS = {"filings": "company_house_filings_stream", "officers": "company_house_officers_stream",
                 "pscs": "company_house_pscs_stream", "charges": "company_house_charges_stream",
                 "insolvency": "company_house_insolvency_stream",
                 "disqualified_officers": "company_house_disqualified_officers_stream",
                 "exemptions": "company_house_exemptions_stream", "psc_statements": "company_house_psc_statements_stream"}  # fmt: skip
EXPECTED_LINEAGE |= {f"{model}_current": {table} for model, table in STREAM_MODELS.items()}
EXPECTED_LINEAGE["company_overview"] = {"company_house_core", "officers_current", "pscs_current", "charges_current",
                                        "insolvency_current", "filings_current"}  # fmt: skip


def test_asset_graph_matches_the_design():
    graph = defs.resolve_asset_graph()
    lineage = {
        key.to_user_string(): {parent.to_user_string() for parent in graph.get(key).parent_keys}
        for key in graph.get_all_asset_keys()
    }
    assert lineage == EXPECTED_LINEAGE
    # Only the bulk file is partitioned, by month (one partition per published file). A landing is a
    # run carrying its offsets (docs/architecture.md §14), so nothing grows with the number of landings.
    partitioned = {key.to_user_string(): graph.get(key).partitions_def for key in graph.get_all_asset_keys() if graph.get(key).partitions_def}
    assert list(partitioned) == ["company_house_bulk"]
    assert isinstance(partitioned["company_house_bulk"], dg.MonthlyPartitionsDefinition)
    # The APIs and the topics are external: the producers feed the topics, Dagster does not.
    assert {k.to_user_string() for k in graph.get_all_asset_keys() if not graph.get(k).is_materializable} == {
        "company_house_streaming_api",
        "company_house_topic",
        *(f"{topic}_{suffix}" for topic in OTHER_TOPICS for suffix in ("streaming_api", "topic")),
    }
    # One group for the companies path, API to watermark (and the overview), and one per other stream
    # named by its topic, API to current-state model, so the lineage page stays readable.
    groups = {k.to_user_string(): graph.get(k).group_name for k in graph.get_all_asset_keys()}
    per_stream = OTHER_STREAMS_GROUP | {f"{model}_current": f"company_house_{model}" for model in STREAM_MODELS}
    assert {asset: group for asset, group in groups.items() if asset in per_stream} == per_stream
    assert {group for asset, group in groups.items() if asset not in per_stream} == {"company_house"}


def test_sensors_and_resources():
    assert {s.name for s in defs.sensors} == {
        "company_house_kafka_sensor", "ch_dbt_automation", "dagster_history_retention",
        *(f"{topic}_kafka_sensor" for topic in OTHER_TOPICS),
    }  # fmt: skip
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in defs.sensors)
    assert set(defs.resources) == {"kafka", "warehouse", "dbt"}


def test_each_streams_sensor_and_landing_job_carry_the_catalogues_names():
    """The names the Dagster instance stores sensor cursors and landing runs under are the catalogue's
    (``StreamSpec.kafka_sensor``, ``StreamSpec.landing_job``), which ``local_restore`` reads; the
    snapshot below spells them out, so neither side can be renamed alone."""
    kafka_sensors = {sensor.name: sensor for sensor in defs.sensors if sensor.name.endswith("_kafka_sensor")}
    assert set(kafka_sensors) == {spec.kafka_sensor for spec in STREAMS.values()}
    for spec in STREAMS.values():
        assert kafka_sensors[spec.kafka_sensor].job_name == spec.landing_job
        # Its landing asset; the companies job also builds the core after landing (defs/stream.py).
        selected = defs.resolve_job_def(spec.landing_job).asset_layer.selected_asset_keys
        assert dg.AssetKey(spec.landing_table) in selected
        assert len(selected) == 1 or spec.name == "companies"
    companies = STREAMS["companies"]
    assert (companies.kafka_sensor, companies.landing_job) == ("company_house_kafka_sensor", "company_house_stream_job")


# Every key the code location serves. `definitions.py` finds them in the defs/ folder
# (dg's component tree): a module added, removed or defining a twin shows up here.
EXPECTED_DEFINITIONS = {
    "assets": sorted(EXPECTED_LINEAGE),
    "asset_checks": sorted([
        "company_house_bulk_reconciliations:not_null_company_house_bulk_reconciliations_file_date",
        "company_house_bulk_reconciliations:unique_company_house_bulk_reconciliations_file_date",
        "company_house_core:accepted_values_company_house_core_company_status__active__dissolved__liquidation__receivership__converted_closed__voluntary_arrangement__insolvency_proceedings__administration__open__closed__registered__removed",
        "company_house_core:not_null_company_house_core_company_number",
        "company_house_core:unique_company_house_core_company_number",
        "company_house_deletions:not_null_company_house_deletions_company_number",
        "company_house_deletions:unique_company_house_deletions_company_number",
        "get_last_timestamp:never_decreases_get_last_timestamp_last_offset__previous_last_offset",
        "get_last_timestamp:not_null_get_last_timestamp_kafka_partition",
        "get_last_timestamp:not_null_get_last_timestamp_last_offset",
        "get_last_timestamp:unique_get_last_timestamp_kafka_partition",
        "get_last_timestamp:watermark_covers_snapshot_get_last_timestamp_",
        "snapshot_streamed_data:accepted_values_snapshot_streamed_data_event_type__changed__deleted",
        "snapshot_streamed_data:not_null_snapshot_streamed_data_company_number",
        "snapshot_streamed_data:unique_snapshot_streamed_data_company_number",
        *(f"{topic}_stream:timepoints_contiguous" for topic in OTHER_TOPICS),
        "company_house_topic:replay_window",
        *(f"{topic}_topic:replay_window" for topic in OTHER_TOPICS),
        "company_overview:not_null_company_overview_company_number",
        "company_overview:unique_company_overview_company_number",
        *(f"{model}_current:{test}_{model}_current_{column}" for model in STREAM_MODELS
          for test, column in (("not_null", "company_number"), ("not_null", "item_id"), ("not_null", "item_key"), ("unique", "item_key"))
          if not (model == "disqualified_officers" and column == "company_number")),  # not under a company
    ]),
    "sensors": sorted(["ch_dbt_automation", "company_house_kafka_sensor", "dagster_history_retention",
                       *(f"{topic}_kafka_sensor" for topic in OTHER_TOPICS)]),
    "schedules": ["company_house_bulk_monthly"],
    "jobs": sorted(["__ASSET_JOB", "company_house_bulk_monthly_job", "company_house_stream_job",
                    *(f"{topic}_stream_job" for topic in OTHER_TOPICS)]),
    "resources": ["dbt", "kafka", "warehouse"],
}


EXPECTED_DEFINITIONS["asset_checks"].sort()


def test_definitions_snapshot():
    graph = defs.resolve_asset_graph()
    repository = defs.get_repository_def()
    assert {
        "assets": sorted(key.to_user_string() for key in graph.get_all_asset_keys()),
        "asset_checks": sorted(f"{key.asset_key.to_user_string()}:{key.name}" for key in graph.asset_check_keys),
        "sensors": sorted(sensor.name for sensor in repository.sensor_defs),
        "schedules": sorted(schedule.name for schedule in repository.schedule_defs),
        "jobs": sorted(repository.job_names),
        "resources": sorted(defs.resources),
    } == EXPECTED_DEFINITIONS
