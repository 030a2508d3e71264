"""A DuckDB warehouse with the bulk table loaded by the real asset, and dbt pointed at it."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from datetime import date, datetime
from pathlib import Path

import dagster as dg
import pytest

from ch_pipeline.companies_house.bulk_csv import write_sample
from ch_pipeline.defs.bulk import company_house_bulk
from ch_pipeline.defs.resources import WarehouseResource

BULK_COMPANIES = 10_000
# The tests' bulk file is older than every event they land (hand-written events from 2024 on).
BASELINE_FILE_DATE = date(2023, 12, 1)
DBT_MODELS = {"snapshot_streamed_data", "company_house_deletions", "company_house_core", "get_last_timestamp",
              "company_house_bulk_reconciliations"}
# The stream models (issue 15, ch_dbt/models/streams): their own assets, ch_dbt_stream_models.
STREAM_CURRENT_MODELS = {f"{m}_current" for m in ("filings", "officers", "pscs", "charges", "insolvency", "disqualified_officers",
                                                  "exemptions", "psc_statements")}  # fmt: skip
STREAM_DBT_MODELS = STREAM_CURRENT_MODELS | {"company_overview"}


class Ticks:
    """Successive evaluations of the project's automation conditions sharing a cursor, like the sensor's ticks."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        from ch_pipeline.definitions import defs

        self.defs = defs
        self.instance = instance
        self.cursor = None

    def requested(self, evaluation_time: datetime | None = None) -> set[str]:
        result = dg.evaluate_automation_conditions(defs=self.defs, instance=self.instance, cursor=self.cursor,
                                                   evaluation_time=evaluation_time)  # fmt: skip
        self.cursor = result.cursor
        # What the sensor would request, execution sets included (the dbt models go as one unit).
        return {key.to_user_string() for key in result._requested_partitions_by_asset_key}


@pytest.fixture(scope="session")
def bulk_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample(tmp_path_factory.mktemp("bulk") / "BasicCompanyDataAsOneFile-test.csv", BULK_COMPANIES, seed=3)


class _WarehouseLink(dict):
    """The one path dbt is given for the session's DuckDB files: a symlink to a folder, re-pointed at
    each test's folder by ``configure_environment`` (and back by its MonkeyPatch's undo).

    dbt re-parses the whole project (~3 s per invocation) when its profile's connection changes (the
    DuckDB path is part of its partial-parse state check), so a new path per test meant a full parse
    per test. The link keeps the profile the same; the file, its WAL and DuckDB's temporary files are
    still in the test's own folder (DuckDB resolves the symlinked folder: one database per real file)."""

    def __init__(self) -> None:
        super().__init__()
        self.dir: Path | None = None

    @property
    def path(self) -> Path:
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="ch-pipeline-tests-duckdb-"))
            atexit.register(shutil.rmtree, self.dir, True)
        return self.dir / "warehouse"

    def __setitem__(self, key: str, target: str) -> None:
        super().__setitem__(key, target)
        new = self.path.with_name("warehouse.new")
        os.symlink(target, new, target_is_directory=True)
        os.replace(new, self.path)  # atomic: the link is always one test's folder


WAREHOUSE_LINK = _WarehouseLink()


def configure_environment(env: pytest.MonkeyPatch, root: Path) -> Path:
    """Point settings.py, the resources and the dbt profile (a subprocess: it reads env) at a new DuckDB file.

    CH_DUCKDB_PATH names it through ``WAREHOUSE_LINK`` (the same string in every test: dbt keeps its
    partial parse); the path returned is the file's real path, in ``root``."""
    path = root / "warehouse.duckdb"
    env.setitem(WAREHOUSE_LINK, "target", str(root.resolve()))
    env.setenv("CH_DATA_DIR", str(root))
    env.setenv("CH_DUCKDB_PATH", str(WAREHOUSE_LINK.path / path.name))
    env.setenv("CH_WAREHOUSE", "duckdb")
    env.delenv("DBT_TARGET", raising=False)
    env.delenv("CH_BULK_CSV", raising=False)
    return path


def load_bulk(db: Path, bulk_csv: Path, instance: dg.DagsterInstance | None = None, file_date: date = BASELINE_FILE_DATE) -> None:
    """The bulk table, loaded by a real run of company_house_bulk (the partition of ``file_date``)."""
    result = dg.materialize(
        [company_house_bulk],
        instance=instance,
        partition_key=file_date.isoformat(),
        resources={"warehouse": WarehouseResource(duckdb_path=str(db))},
        run_config={"ops": {"company_house_bulk": {"config": {"source": str(bulk_csv)}}}},
    )
    assert result.success
