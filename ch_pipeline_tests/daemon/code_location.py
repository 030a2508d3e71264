"""The test code location: the real definitions (``ch_pipeline.definitions.defs``, unchanged), plus fault points.

The daemon suite's code server loads this module instead of ``ch_pipeline.definitions``
(``dagster api grpc -m ch_pipeline_tests.daemon.code_location``). Every asset, sensor, job,
resource and automation condition is the project's own object; importing this module only wraps
a few functions from outside, in the processes that import it (the code server and every run
worker it spawns), and each wrapper does nothing unless a marker file armed it (``faults.py``):

- landing (``DuckDBWarehouse.land_messages``): SIGKILL before the write, inside the transaction before
  COMMIT, or after the commit before Dagster records the materialization (the same fault points
  as ``ch_pipeline_tests/reliability/faulty_landing.py``, but inside a real run worker launched
  by the daemon through the code server);
- dbt (``DbtCliInvocation``): hold a build before dbt starts (its ``duckdb`` pool slot held), or
  pause (SIGSTOP) the ``dbt`` child right after Dagster recorded a given model, so the test can
  SIGKILL the run worker and its ``dbt`` child between two models.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from contextlib import contextmanager

from dagster_dbt.core.dbt_cli_invocation import DbtCliInvocation

from ch_pipeline.definitions import defs
from ch_pipeline.warehouse import duckdb_warehouse
from ch_pipeline_tests.daemon import faults

__all__ = ["defs"]

log = logging.getLogger(__name__)
# A held dbt build waits this long for the test's SIGKILL, then resumes (a test that went away).
HOLD_FOR_KILL_SECONDS = 180.0


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def current_run_id() -> str | None:
    import dagster as dg

    try:
        return dg.AssetExecutionContext.get().run_id
    except Exception:  # noqa: BLE001 - outside a run (never, for the hooks below)
        return None


# --- landing --------------------------------------------------------------------------------

_original_connect = duckdb_warehouse.connect_for_landing
_original_land_messages = duckdb_warehouse.DuckDBWarehouse.land_messages


class _DiesAtCommit:
    """The landing connection; its COMMIT SIGKILLs the process first when the marker is armed."""

    def __init__(self, con) -> None:
        self._con = con

    def commit(self):
        if faults.claim(faults.LANDING_DURING_WRITE, current_run_id()) is not None:
            die()
        return self._con.commit()

    def __getattr__(self, name):
        return getattr(self._con, name)


@contextmanager
def _connect_dying_at_commit(path):
    with _original_connect(path) as con:
        yield _DiesAtCommit(con)


def _land_messages(self, *args, **kwargs):
    if faults.claim(faults.LANDING_BEFORE_WRITE, current_run_id()) is not None:
        die()
    landed = _original_land_messages(self, *args, **kwargs)
    if faults.claim(faults.LANDING_AFTER_WRITE, current_run_id()) is not None:
        die()
    return landed


duckdb_warehouse.DuckDBWarehouse.land_messages = _land_messages
# Only the landing's own connection (not, say, the bulk load's) can die at its commit.
duckdb_warehouse.connect_for_landing = _connect_dying_at_commit

# --- dbt ------------------------------------------------------------------------------------

_original_run = DbtCliInvocation.run.__func__
_original_stream = DbtCliInvocation.stream


def _run(cls, args, *rest, **kwargs):
    context = kwargs.get("context")
    if "build" in args:
        held = faults.claim(faults.DBT_HOLD_BUILD, getattr(context, "run_id", None))
        if held is not None:
            log.warning("fault point: holding this dbt build (and its duckdb pool slot) for %ss", held)
            time.sleep(float(held or 30))
    return _original_run(cls, args, *rest, **kwargs)


def _stream(self):
    return _hold_after_models(self, _original_stream(self))


def _hold_after_models(invocation: DbtCliInvocation, events):
    context = invocation.context
    for event in events:
        yield event
        output_name = getattr(event, "output_name", None)
        if context is None or output_name is None:
            continue
        model = context.asset_key_for_output(output_name).to_user_string()
        marker = faults.dbt_hold_after(model)
        value = faults.peek(marker)
        if value is None or value == faults.INCREMENTAL and not _core_built_before(context):
            continue
        if faults.claim(marker, context.run_id) is not None:
            # Dagster has recorded `model`; dbt is paused before its next node commits. The test
            # SIGKILLs this worker and the paused dbt now.
            os.kill(invocation.process.pid, signal.SIGSTOP)
            deadline = time.monotonic() + HOLD_FOR_KILL_SECONDS
            while time.monotonic() < deadline:
                time.sleep(0.2)
            os.kill(invocation.process.pid, signal.SIGCONT)


def _core_built_before(context) -> bool:
    """Did another run build the core before this one (is this an incremental build)?"""
    import dagster as dg

    records = context.instance.fetch_materializations(dg.AssetKey("company_house_core"), limit=5).records
    return any(record.run_id != context.run_id for record in records)


DbtCliInvocation.run = classmethod(_run)
DbtCliInvocation.stream = _stream
