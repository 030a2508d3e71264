"""Dagster metadata derived from the one table definition (``ch_pipeline.warehouse.schema``)."""

import dagster as dg

from ch_pipeline.warehouse.schema import Column

# One group for the whole path, API to watermark: the lineage page opens on every asset.
ASSET_GROUP = "company_house"


def column_schema(columns: list[Column]) -> dict[str, dg.TableSchema]:
    """``dagster/column_schema`` metadata: the table's columns, types and descriptions in the UI."""
    return {
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(c.name, c.duckdb_type, description=c.description) for c in columns]
        )
    }
