"""The one ``Definitions`` of the project: every asset, sensor, check and resource is composed here."""

import dagster as dg

from ch_pipeline.defs.resources import KafkaResource, WarehouseResource
from ch_pipeline.defs.sources import source_specs
from ch_pipeline.defs.stream import company_house_kafka_sensor, company_house_stream

defs = dg.Definitions(
    assets=[*source_specs, company_house_stream],
    sensors=[company_house_kafka_sensor],
    resources={"kafka": KafkaResource.from_env(), "warehouse": WarehouseResource.from_env()},
)
