"""Shared fixtures: a real Kafka-protocol broker (tansu) for the whole session, and the offline BigQuery
emulator (``bigquery_emulator``, ``bigquery_dataset``), also one per session.

The emulator's fixtures are registered here, once: a session-scoped fixture imported into each test
module instead is a separate fixture per module, so each module started its own emulator.

``make test`` runs the suite on two pytest-xdist workers (``-n 2 --dist loadgroup``); the hooks below
keep tests that run side by side apart (``pytest_configure``, ``pytest_xdist_make_scheduler``)
and bring the crash matrices' outcome tables back from the workers."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from ch_pipeline.kafka.broker import LocalBroker
from ch_pipeline_tests.bigquery_emulator import bigquery_dataset, bigquery_emulator  # noqa: F401 (fixtures)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory):
    """One real broker process for the test session, stopped whatever happens."""
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with LocalBroker(log_path=log) as running:
        yield running


@pytest.fixture
def topic_name() -> str:
    """A fresh topic name per test, so tests sharing the broker never see each other's data."""
    return f"test_{uuid.uuid4().hex[:12]}"


# Tests that start the whole pipeline as processes (the real dagster-daemon or `dagster dev`, the demo,
# the production topology on Postgres, the restart of `ch-pipeline run`): each keeps both cores busy
# and measures how long the pipeline takes to converge, so two of them side by side would only slow
# each other towards their bounds. One unit of work (pytest_xdist_make_scheduler): they run one after
# the other on one worker, and the other worker runs the rest of the suite beside them.
HEAVY_GROUP = "heavy"
HEAVY_PATHS = ("daemon/", "production/", "ui/", "test_run_restart.py", "test_demo.py")
TESTS_ROOT = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        # Every dbt build of the Dagster assets writes to one folder (settings.dbt_build_target_path,
        # default ch_dbt/target/ch_dbt_models): two workers building at once would overwrite each
        # other's manifest, run results and partial-parse file. A folder per worker, kept between
        # sessions like the default one (dbt keeps its partial parse). Tests that set their own
        # DBT_TARGET_PATH still do (monkeypatch), and subprocesses inherit the worker's.
        base = os.environ.get("DBT_TARGET_PATH", "target")
        os.environ["DBT_TARGET_PATH"] = str(Path(base) / f"xdist-{worker}")


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup`` (``make test``), grouped here, by path: pytest-xdist 3.8 marks a test's
    ``xdist_group`` by rewriting ``item._nodeid``, which pytest 9.2 no longer reads, so marks never
    reach its scheduler. The heavy tests (``HEAVY_PATHS``) are one unit of work; every other module
    is one unit, so its module-scoped fixtures are built once, on one worker. The heavy
    unit is handed out first: it is the longest (~15 minutes serial), and the other worker fills the
    time beside it with the rest of the suite."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByPath(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return HEAVY_GROUP if path.removeprefix(f"{TESTS_ROOT.name}/").startswith(HEAVY_PATHS) else path

        def _assign_work_unit(self, node) -> None:
            if HEAVY_GROUP in self.workqueue:
                self.workqueue.move_to_end(HEAVY_GROUP, last=False)
            super()._assign_work_unit(node)

    return ByPath(config, log)


# The crash matrices print an outcome table at the end of the session: each conftest that has one
# defines ``session_table`` (daemon/conftest.py, reliability/conftest.py). Under xdist those conftests
# run in the workers, which print nothing: each worker sends its rows, and the controller prints them.
WORKER_TABLES: dict[str, tuple[list[str], list[str]]] = {}


def session_tables(config: pytest.Config) -> list[tuple[str, list[str], list[str]]]:
    """The outcome tables of this process's conftests: (title, header lines, rows) each."""
    return [table for plugin in config.pluginmanager.get_plugins()
            if callable(getattr(plugin, "session_table", None)) and (table := plugin.session_table())]  # fmt: skip


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["session_tables"] = [list(table) for table in session_tables(session.config)]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    for title, header, rows in getattr(node, "workeroutput", {}).get("session_tables", []):
        WORKER_TABLES.setdefault(title, (header, []))[1].extend(rows)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    tables = [(title, header, rows) for title, (header, rows) in WORKER_TABLES.items()] or session_tables(config)
    for title, header, rows in tables:
        terminalreporter.write_sep("=", title)
        for line in header + rows:
            terminalreporter.write_line(line)
