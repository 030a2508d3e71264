"""Fixtures: a throwaway Postgres cluster, and docker-compose.yml's services on it as local processes.

Both come from ``ch_pipeline.production_stack`` (the same code as ``ch-pipeline prod-local``). Skipped,
with the reason, only where the PostgreSQL server binaries are not installed (``make test`` installs
postgresql-15 with apt-get when it runs as root).
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

from ch_pipeline.companies_house.streams import COMPANIES, STREAM_NAMES
from ch_pipeline.compose_project import REPO_ROOT, read_env_file
from ch_pipeline.postgres_cluster import PostgresCluster, postgres_bin_dir
from ch_pipeline.production_stack import ProductionStack

# The stream: 600 distinct events at 60/s, so the Kafka sensor (every 2 s) cuts a few landing runs,
# and the whole test stays within ~2-8 minutes on 2 busy cores (each run is a process of ~5-20 s here).
EVENTS, RATE, SEED, BULK_ROWS, SENSOR_INTERVAL = 600, 60.0, 11, 2000, 2
# Every stream has its producer service; one other stream (officers) flows end to end, the rest are
# quiet (heartbeats only): each flowing stream costs landing runs and dbt builds on the same 2 cores.
FLOWING, FLOWING_EVENTS, STREAMS_SENSOR_INTERVAL = "officers", 300, 5
STREAM_EVENTS = {name: FLOWING_EVENTS if name == FLOWING else 0 for name in STREAM_NAMES if name != COMPANIES}


@pytest.fixture(scope="session")
def postgres_cluster():
    """initdb + pg_ctl start on a free loopback port (as an unprivileged user when we are root), with
    the user and database of deploy/postgres.env.example and a random password; always removed."""
    if postgres_bin_dir() is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl, postgres) are not installed: `make test` installs "
                    "postgresql-15 with apt-get when run as root; elsewhere `apt-get install postgresql-15`")  # fmt: skip
    template = read_env_file(REPO_ROOT / "deploy" / "postgres.env.example")
    parent = Path(tempfile.mkdtemp(prefix="ch-pg-"))
    parent.chmod(0o711)  # the cluster's own directory below belongs to the Postgres user
    try:
        with PostgresCluster(parent / "cluster", template["POSTGRES_USER"], secrets.token_hex(16), template["POSTGRES_DB"]) as cluster:
            yield cluster
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(scope="module")
def production_stack(postgres_cluster, tmp_path_factory):
    """Every service of docker-compose.yml that runs our image, started as compose would start it;
    stopped (SIGTERM, then SIGKILL of each process group) whatever happens. The logs are kept in
    pytest's temporary directory (``production-logs*``)."""
    root = Path(tempfile.mkdtemp(prefix="ch-prod-"))
    stack = ProductionStack(root, events=EVENTS, rate=RATE, seed=SEED, bulk_rows=BULK_ROWS, sensor_interval=SENSOR_INTERVAL,
                            postgres=postgres_cluster, stream_events=STREAM_EVENTS,
                            streams_sensor_interval=STREAMS_SENSOR_INTERVAL)  # fmt: skip
    try:
        with stack:
            yield stack
    finally:
        kept = tmp_path_factory.mktemp("production-logs")
        shutil.copytree(root / "logs", kept, dirs_exist_ok=True)
        print(f"production stack logs: {kept}")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def instance(production_stack):
    """The Dagster instance the services share: Postgres storage, from the stack's own dagster.yaml."""
    instance = production_stack.instance()
    yield instance
    instance.dispose()
