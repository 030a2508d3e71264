"""The code location is declared once, in pyproject.toml's ``[tool.dg.project]``; every other place that
has to name it (a workspace file, a command line) says what Dagster itself reads from there."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def declared() -> tuple[str, str]:
    """(module, location name) as Dagster's own pyproject loader resolves them (`dagster dev`, `dg`)."""
    from dagster._core.workspace.load_target import ModuleTarget, get_target_from_toml_data

    target = get_target_from_toml_data(tomllib.loads((REPO / "pyproject.toml").read_text()))
    assert isinstance(target, ModuleTarget)
    return target.module_name, target.location_name


def test_pyproject_declares_it_once_in_tool_dg():
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]
    assert "dagster" not in tool, "[tool.dagster] would be a second declaration: dagster dev reads [tool.dg] too"
    assert tool["dg"]["directory_type"] == "project"
    assert declared() == ("ch_pipeline.definitions", "ch_pipeline")


def test_dg_reads_the_same_declaration():
    from dagster_dg_core.config import DgProjectConfig

    raw = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["dg"]["project"]
    config = DgProjectConfig.from_raw(raw)
    module, location = declared()
    assert (config.code_location_target_module or f"{config.root_module}.definitions") == module
    assert config.code_location_name == location


def test_workspaces_and_commands_name_the_declared_location():
    module, location = declared()
    (local,) = yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"]
    assert local["python_module"] == {"module_name": module, "location_name": location}
    (prod,) = yaml.safe_load((REPO / "deploy" / "workspace.yaml").read_text())["load_from"]
    assert prod["grpc_server"]["location_name"] == location
    command = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["ch-pipeline-code"]["command"]
    assert command[command.index("-m") + 1] == module
    (cmd,) = re.findall(r"^CMD (.*)$", (REPO / "Dockerfile").read_text(), re.M)
    argv = yaml.safe_load(cmd) if cmd.startswith("[") else shlex.split(cmd)
    assert argv[argv.index("-m") + 1] == module


def test_no_other_file_names_another_module_or_location():
    """Code that must name the location (a process started with `-m`, a ModuleTarget) names the
    declared one: a rename in pyproject.toml that misses one of them fails here."""
    import subprocess

    module, location = declared()
    files = subprocess.run(["git", "ls-files", "ch_pipeline", "benchmarks", "Dockerfile", "docker-compose.yml"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    modules, locations = set(), set()
    for name in files:
        text = (REPO / name).read_text(errors="replace")
        modules.update(re.findall(r"""["']-m["'],\s*["']([\w.]+\.definitions)["']""", text))
        modules.update(re.findall(r"""module_name\s*=\s*["']([\w.]+)["']""", text))
        locations.update(re.findall(r"""location_name\s*=\s*["']([\w.-]+)["']""", text))
    assert modules == {module} and locations <= {location}, (modules, locations)
