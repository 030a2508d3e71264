"""The warehouse: one interface (``landing.Warehouse``) and one module per implementation.

``IMPLEMENTATIONS`` is the one list of warehouses: ``CH_WAREHOUSE`` names one of them, and the
warehouse resource builds that class (``from_config``) inside a run. Adding a warehouse is a module
with a class implementing ``Warehouse`` (and its ``from_config``) and one line here.
"""

from __future__ import annotations

import importlib

# CH_WAREHOUSE name -> "module:Class", imported only when a run asks for it.
IMPLEMENTATIONS: dict[str, str] = {
    "duckdb": "ch_pipeline.warehouse.duckdb_warehouse:DuckDBWarehouse",
    "bigquery": "ch_pipeline.warehouse.bigquery_warehouse:BigQueryWarehouse",
}


def check_warehouse_name(name: str) -> str:
    """``name`` if it names an implementation, else a ``ValueError`` naming CH_WAREHOUSE."""
    if name not in IMPLEMENTATIONS:
        expected = " or ".join(repr(known) for known in IMPLEMENTATIONS)
        raise ValueError(f"CH_WAREHOUSE must be {expected}, got {name!r}")
    return name


def implementation(name: str) -> type:
    """The class implementing the warehouse ``name``."""
    module, _, cls = IMPLEMENTATIONS[check_warehouse_name(name)].partition(":")
    return getattr(importlib.import_module(module), cls)
