"""Fault markers: files that arm a fault point inside the real run workers, each firing once.

The test arms a fault by writing a marker file into the directory named by ``CH_FAULT_DIR``
(``arm``); the hook in the run worker (``code_location.py``) claims it with ``os.rename`` before
acting, so exactly one process fires each marker however many race for it, and then records who
fired it (pid, run id) in ``<name>.fired.json`` (``wait_fired`` reads it). A marker may carry a
value (e.g. seconds to hold a build).

Fault points (marker names):
- ``landing_before_write``: the landing run SIGKILLs itself before the warehouse is opened (its
  read streams into the landing transaction, so nothing is read yet either).
- ``landing_during_write``: inside the landing transaction, every chunk read and written, before COMMIT.
- ``landing_after_write``: the transaction committed; SIGKILLs itself before Dagster records the
  materialization.
- ``dbt_hold_after_<model>``: the dbt run worker has recorded ``<model>``'s materialization; it
  pauses its ``dbt`` child (SIGSTOP) and waits, so that the test can SIGKILL it at exactly that
  point (the models after ``<model>`` have not run). Armed with the value ``incremental``, only
  a build on an existing core fires it (not the first build).
- ``dbt_hold_build``: a dbt run holds its ``duckdb`` pool slot for the marker's value in seconds
  before starting dbt (a long build), so that landings queue behind it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

FAULT_DIR_ENV = "CH_FAULT_DIR"

LANDING_BEFORE_WRITE = "landing_before_write"
LANDING_DURING_WRITE = "landing_during_write"
LANDING_AFTER_WRITE = "landing_after_write"
LANDING_FAULTS = (LANDING_DURING_WRITE, LANDING_BEFORE_WRITE, LANDING_AFTER_WRITE)
DBT_HOLD_BUILD = "dbt_hold_build"


def dbt_hold_after(model: str) -> str:
    return f"dbt_hold_after_{model}"


def fault_dir() -> Path | None:
    value = os.environ.get(FAULT_DIR_ENV)
    return Path(value) if value else None


# --- the test's side -----------------------------------------------------------------------


def arm(directory: Path, name: str, value: str = "") -> None:
    """Arm ``name``: the next run worker reaching that point fires it (once)."""
    directory.mkdir(parents=True, exist_ok=True)
    temp = directory / f".{name}.tmp"
    temp.write_text(value)
    os.rename(temp, directory / name)


def is_armed(directory: Path, name: str) -> bool:
    return (directory / name).exists()


INCREMENTAL = "incremental"


def disarm(directory: Path, name: str) -> bool:
    """Take an armed marker back (True if it had not fired)."""
    try:
        os.rename(directory / name, directory / f".{name}.disarmed.{time.monotonic_ns()}")
        return True
    except FileNotFoundError:
        return False


def fired(directory: Path, name: str) -> dict | None:
    """``{"pid", "run_id", "at"}`` of the process that fired ``name``, once it has."""
    path = directory / f"{name}.fired.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def wait_fired(directory: Path, name: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = fired(directory, name)
        if record is not None:
            return record
        time.sleep(0.05)
    raise AssertionError(f"fault marker {name!r} was not fired within {timeout:.0f}s")


def clear_fired(directory: Path, name: str) -> None:
    """Forget that ``name`` fired (to arm it again)."""
    (directory / f"{name}.fired.json").unlink(missing_ok=True)


# --- the run worker's side -----------------------------------------------------------------


def peek(name: str) -> str | None:
    """The value of the marker ``name`` if it is armed (without consuming it)."""
    directory = fault_dir()
    if directory is None:
        return None
    try:
        return (directory / name).read_text()
    except FileNotFoundError:
        return None


def claim(name: str, run_id: str | None = None) -> str | None:
    """Consume the marker ``name`` if it is armed: its value, or None when it is not armed (or
    another process claimed it first). The claim is recorded in ``<name>.fired.json``."""
    directory = fault_dir()
    if directory is None:
        return None
    claimed = directory / f".{name}.claimed.{os.getpid()}"
    try:
        os.rename(directory / name, claimed)
    except FileNotFoundError:
        return None
    value = claimed.read_text()
    record = directory / f".{name}.fired.tmp.{os.getpid()}"
    record.write_text(json.dumps({"pid": os.getpid(), "run_id": run_id, "at": time.time(), "value": value}))
    os.rename(record, directory / f"{name}.fired.json")
    return value
