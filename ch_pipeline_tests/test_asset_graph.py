"""A snapshot of the asset graph: an accidental change to keys, lineage or partitioning fails here."""

from __future__ import annotations

import dagster as dg

from ch_pipeline.definitions import defs

# asset -> its upstream assets, as the lineage graph shows them
EXPECTED_LINEAGE = {
    "companies_house_streaming_api": set(),
    "company_house_topic": {"companies_house_streaming_api"},
    "company_house_stream": {"company_house_topic"},
    "company_house_bulk": set(),
    "snapshot_streamed_data": {"company_house_stream"},
    "company_house_deletions": {"snapshot_streamed_data", "company_house_stream"},
    "company_house_core": {"snapshot_streamed_data", "company_house_deletions", "company_house_stream", "company_house_bulk"},
    "get_last_timestamp": {"snapshot_streamed_data", "company_house_core"},
}


def test_asset_graph_matches_the_design():
    graph = defs.resolve_asset_graph()
    lineage = {
        key.to_user_string(): {parent.to_user_string() for parent in graph.get(key).parent_keys}
        for key in graph.get_all_asset_keys()
    }
    assert lineage == EXPECTED_LINEAGE
    # Only the stream asset is partitioned, by the dynamic offset-range partitions.
    partitioned = {key.to_user_string(): graph.get(key).partitions_def for key in graph.get_all_asset_keys() if graph.get(key).partitions_def}
    assert list(partitioned) == ["company_house_stream"]
    assert isinstance(partitioned["company_house_stream"], dg.DynamicPartitionsDefinition)
    # The API and the topic are external: the producer feeds the topic, Dagster does not.
    assert {k.to_user_string() for k in graph.get_all_asset_keys() if not graph.get(k).is_materializable} == {
        "companies_house_streaming_api",
        "company_house_topic",
    }
    # One group for the whole path, so the lineage page opens on all of it.
    assert {graph.get(k).group_name for k in graph.get_all_asset_keys()} == {"company_house"}


def test_sensors_and_resources():
    assert {s.name for s in defs.sensors} == {"company_house_kafka_sensor", "ch_dbt_automation"}
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in defs.sensors)
    assert set(defs.resources) == {"kafka", "warehouse", "dbt"}
