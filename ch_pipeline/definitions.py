"""The project's ``Definitions``: everything under ``defs/``, plus the resources it needs.

Assets, checks, jobs and sensors are module-level objects of ``ch_pipeline/defs/`` and are found there
by dg's component tree (the folder is ``[tool.dg.project]`` in pyproject.toml, where the code location
is declared). Resources are built from the environment when the code location loads, so they
are composed here, once.
"""

from pathlib import Path

import dagster as dg

from ch_pipeline.defs.dbt import dbt_resource
from ch_pipeline.defs.resources import KafkaResource, WarehouseResource, fixed_resource

# dbt's executable, project and target are not run config either: a launched run must not pick them.
DBT = fixed_resource(dbt_resource(), "dbt CLI on ch_dbt/, target from DBT_TARGET (default CH_WAREHOUSE)")


def load_defs_folder() -> dg.Definitions:
    """Everything under ``defs/``, as ``dg.load_from_defs_folder`` finds it, without the catalogue of
    every installed dg plugin's component types that it also attaches: building it imports each plugin
    (dagster-gcp, and with it BigQuery's client), ~1 s of every run's start (docs/architecture.md §11),
    for a list of components this project does not use."""
    tree = dg.ComponentTree.for_project(path_within_project=Path(__file__).parent)
    return dg.Definitions.merge(tree.build_defs(tree.defs_module_path), dg.Definitions(component_tree=tree))


defs = dg.Definitions.merge(
    load_defs_folder(),
    dg.Definitions(
        resources={"kafka": KafkaResource.from_env(), "warehouse": WarehouseResource.from_env(), "dbt": DBT},
        # Every run's steps in the run's own process: a second process per step cost ~5 s of each dbt
        # build (the duckdb pool serialises the writers anyway; docs/architecture.md §11).
        executor=dg.in_process_executor,
    ),
)
