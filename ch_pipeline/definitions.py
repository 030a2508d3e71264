"""The one ``Definitions`` of the project: every asset, sensor, check and resource is composed here."""

import dagster as dg

from ch_pipeline.defs.resources import KafkaResource
from ch_pipeline.defs.sources import source_specs

defs = dg.Definitions(
    assets=[*source_specs],
    resources={"kafka": KafkaResource.from_env()},
)
