"""A real run of ``company_house_stream`` for one landing (its offsets key) that SIGKILLs itself at ``CH_FAULT_POINT``.

It shares the scenario's Dagster instance (DAGSTER_HOME) and DuckDB file (CH_DUCKDB_PATH) with the
test, so what the crash leaves behind (a run stuck in STARTED, a DuckDB WAL, a half-open
transaction) is what the test then recovers from.
- ``landing_before_write``: dies before the warehouse is opened (the read streams into the landing
  transaction, so nothing is read yet either).
- ``landing_during_write``: inside the landing transaction, every chunk read and written, before COMMIT.
- ``landing_after_write``: the transaction committed; dies before Dagster records the materialization.
"""

import os
import signal
import sys
from contextlib import contextmanager

import dagster as dg

from ch_pipeline.defs.resources import KafkaResource, WarehouseResource
from ch_pipeline.defs.stream import company_house_stream, landing_run_config
from ch_pipeline.warehouse import duckdb_warehouse

FAULT_POINT = os.environ["CH_FAULT_POINT"]


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class DiesAtCommit:
    """A DuckDB connection whose COMMIT never happens: the process dies first."""

    def __init__(self, con) -> None:
        self._con = con

    def commit(self):
        die()

    def __getattr__(self, name):
        return getattr(self._con, name)


original_connect = duckdb_warehouse.connect_for_landing
original_land_messages = duckdb_warehouse.DuckDBWarehouse.land_messages


@contextmanager
def connect(path):
    with original_connect(path) as con:
        yield DiesAtCommit(con) if FAULT_POINT == "landing_during_write" else con


def land_messages(self, *args, **kwargs):
    if FAULT_POINT == "landing_before_write":
        die()
    landed = original_land_messages(self, *args, **kwargs)
    if FAULT_POINT == "landing_after_write":
        die()
    return landed


duckdb_warehouse.connect_for_landing = connect
duckdb_warehouse.DuckDBWarehouse.land_messages = land_messages

if __name__ == "__main__":
    dg.materialize(
        [company_house_stream],
        run_config=landing_run_config(sys.argv[1]),
        instance=dg.DagsterInstance.get(),
        resources={"kafka": KafkaResource.from_env(), "warehouse": WarehouseResource.from_env()},
    )
