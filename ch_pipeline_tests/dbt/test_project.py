"""The dbt project agrees with the one definition of the tables (ch_pipeline/warehouse/schema.py)."""

from __future__ import annotations

import yaml

from ch_pipeline.defs.dbt import DBT_PROJECT_DIR
from ch_pipeline.warehouse.schema import BULK_COLUMNS, BULK_TABLE, STREAM_COLUMNS, STREAM_TABLE


def load(name: str) -> dict:
    return yaml.safe_load((DBT_PROJECT_DIR / "models" / name).read_text())


def test_sources_list_the_columns_of_schema_py():
    [source] = load("staging/sources.yml")["sources"]
    columns = {t["name"]: [c["name"] for c in t["columns"]] for t in source["tables"]}
    assert columns == {STREAM_TABLE: [c.name for c in STREAM_COLUMNS], BULK_TABLE: [c.name for c in BULK_COLUMNS]}


def test_core_has_the_bulk_columns_plus_the_event_it_holds():
    """A row from a bulk file holds the file's date as last_order_time, not as a column of its own."""
    models = {m["name"]: m for m in load("core/company_house_core.yml")["models"]}
    core = [c["name"] for c in models["company_house_core"]["columns"]]
    assert core == [c.name for c in BULK_COLUMNS if c.name != "file_date"] + [
        "last_published_at", "last_kafka_offset", "last_kafka_partition", "last_timepoint", "last_order_time"
    ]
