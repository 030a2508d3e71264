"""The code location the daemon suite serves: the project's definitions, as a code server loads them.

Found by the daemon suite: with the dbt resource wrapped as a fixed (not run-configurable)
resource, its ``target`` stayed the unresolved ``EnvVar("DBT_TARGET")``, i.e. the literal string
``DBT_TARGET``, and every dbt build launched by the daemon failed with "The profile 'ch_dbt' does
not have a target named 'DBT_TARGET'" (the core was never built). These check, in a fresh process
with the environment the stack gives its code server, what a run would actually get.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ch_pipeline_tests.daemon.stack import CODE_LOCATION_MODULE, REPO_ROOT

PROBE = f"""
import json
from {CODE_LOCATION_MODULE} import defs
import ch_pipeline.definitions as real
resource = defs.resources["dbt"]
dbt = resource.resource_fn(None) if hasattr(resource, "resource_fn") else resource
print(json.dumps({{"target": dbt.target, "same_defs": defs is real.defs}}))
"""


def probe(**env: str) -> dict:
    environment = {k: v for k, v in os.environ.items() if k not in ("DBT_TARGET", "CH_WAREHOUSE")}
    environment.update(env, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, "-c", PROBE], env=environment, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("env", "target"), [({"DBT_TARGET": "duckdb"}, "duckdb"), ({"CH_WAREHOUSE": "duckdb"}, "duckdb"), ({}, "duckdb")])
def test_the_dbt_resource_a_run_gets_names_a_real_dbt_target(env: dict, target: str):
    got = probe(**env)
    assert got["same_defs"], "the test code location serves the project's own Definitions object"
    assert got["target"] in (target, None), f"dbt would be run with --target {got['target']!r}"
