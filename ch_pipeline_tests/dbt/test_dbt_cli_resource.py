"""The project's dbt CLI resource: the version it assumes is dbt's own, and one reused target folder."""

from __future__ import annotations

import re
import subprocess

from packaging import version

from ch_pipeline.defs.dbt import DbtCli, ch_dbt_project, dbt_executable, dbt_resource
from ch_pipeline.settings import dbt_build_target_path


def test_the_version_read_from_the_package_is_the_one_dbt_reports():
    """dagster-dbt asks ``dbt --version`` on every run; the resource reads the installed dbt-core instead."""
    reported = subprocess.run([dbt_executable(), "--version"], capture_output=True, text=True, check=True).stdout
    assert dbt_resource()._cli_version == version.parse(re.search(r"installed: (\d+\.\d+\.\d+)", reported).group(1))


def test_another_dbt_is_asked_for_its_version(tmp_path):
    fake = tmp_path / "dbt"
    fake.write_text("#!/bin/sh\necho 'Core:\n  - installed: 9.8.7'\n")
    fake.chmod(0o755)
    assert DbtCli(project_dir=ch_dbt_project, dbt_executable=str(fake))._cli_version == version.parse("9.8.7")


def test_every_invocation_writes_to_the_one_target_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("DBT_TARGET_PATH", str(tmp_path / "target"))
    assert dbt_resource()._get_unique_target_path(context=None) == dbt_build_target_path() == tmp_path / "target" / "ch_dbt_models"
