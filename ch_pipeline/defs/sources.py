"""External assets upstream of everything we materialize: the API and the Kafka topic.

They are not materialized by Dagster (the producer feeds the topic), but they put the whole path
API -> topic -> stream -> dbt on the lineage graph.
"""

import dagster as dg

from ch_pipeline.defs.metadata import ASSET_GROUP

company_house_streaming_api = dg.AssetSpec(
    key="company_house_streaming_api",
    description="Companies House streaming API, /companies (HTTP long-lived NDJSON, resumable by timepoint).",
    group_name=ASSET_GROUP,
    kinds={"api"},
    metadata={"url": "https://stream.companieshouse.gov.uk/companies"},
)

company_house_topic = dg.AssetSpec(
    key="company_house_topic",
    description="Kafka topic company_house: one message per stream event, keyed by company_number, "
    "value = the original event JSON. Fed by `ch-pipeline produce`.",
    group_name=ASSET_GROUP,
    kinds={"kafka"},
    deps=[company_house_streaming_api],
)

source_specs = [company_house_streaming_api, company_house_topic]
