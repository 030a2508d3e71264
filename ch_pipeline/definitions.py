"""The one ``Definitions`` of the project: every asset, sensor, check and resource is composed here."""

import dagster as dg

from ch_pipeline.defs.resources import KafkaResource, WarehouseResource, fixed_resource
from ch_pipeline.defs.sources import source_specs
from ch_pipeline.defs.stream import company_house_kafka_sensor, company_house_stream
from ch_pipeline.defs.bulk import company_house_bulk
from ch_pipeline.defs.dbt import ch_dbt_models, dbt_automation_sensor, dbt_resource
from ch_pipeline.defs.retention import dagster_history_retention

# dbt's executable, project and target are not run config either: a launched run must not pick them.
DBT = fixed_resource(dbt_resource(), "dbt CLI on ch_dbt/, target from DBT_TARGET (default CH_WAREHOUSE)")

defs = dg.Definitions(
    assets=[*source_specs, company_house_stream, company_house_bulk, ch_dbt_models],
    sensors=[company_house_kafka_sensor, dbt_automation_sensor, dagster_history_retention],
    resources={"kafka": KafkaResource.from_env(), "warehouse": WarehouseResource.from_env(), "dbt": DBT},
)
