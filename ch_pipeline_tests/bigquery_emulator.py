"""An offline BigQuery for tests: the ``crucible-emulator`` REST server, one per test session.

crucible-emulator pins its own duckdb and sqlglot, so it lives in a separate virtualenv
(``.venv-bq/``, created by ``make test`` or on first use here) and is driven over HTTP from ``.venv``
by google-cloud-bigquery and dbt-bigquery. What it supports and refuses is measured in
``deploy/bigquery-emulator.md`` (no DELETE/UPDATE/transactions, no REQUIRED columns in REST
schemas, CSV loads only).

Its fixtures are registered once, in ``ch_pipeline_tests/conftest.py``: a test asks for
``bigquery_emulator`` or ``bigquery_dataset`` by name. Do not import them into a test module: a
session-scoped fixture imported into a module is a new fixture of that module, with its own emulator.

``python -m ch_pipeline_tests.bigquery_emulator`` only creates the virtualenv (the Makefile's step).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ch_pipeline.kafka.broker import free_port

# Pre-alpha: pinned, so a new release cannot change what the suite measures. `[server]` brings
# starlette + uvicorn, without which `crucible serve` cannot start.
EMULATOR_REQUIREMENT = "crucible-emulator[server]==0.1.0a2"
EMULATOR_VENV = Path(__file__).resolve().parents[1] / ".venv-bq"
STARTUP_TIMEOUT_S = 30.0


class EmulatorUnavailable(RuntimeError):
    """The emulator's virtualenv could not be created (e.g. no access to PyPI)."""


def _stamp(venv: Path) -> Path:
    return venv / ".installed"


def crucible_binary(venv: Path = EMULATOR_VENV) -> Path:
    return venv / "bin" / "crucible"


def ensure_emulator_venv(venv: Path = EMULATOR_VENV) -> Path:
    """The ``crucible`` executable, installing ``EMULATOR_REQUIREMENT`` into ``venv`` if needed.

    The stamp records the requirement installed, so changing the pin reinstalls.
    """
    binary = crucible_binary(venv)
    stamp = _stamp(venv)
    if binary.exists() and stamp.exists() and stamp.read_text().strip() == EMULATOR_REQUIREMENT:
        return binary
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", EMULATOR_REQUIREMENT],
    ]
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True)
        if result.returncode != 0:
            raise EmulatorUnavailable(
                f"`{' '.join(step)}` failed ({result.returncode}): {result.stderr.strip()[-500:]}"
            )
    stamp.write_text(EMULATOR_REQUIREMENT + "\n")
    return binary


@dataclass
class BigQueryEmulator:
    """A running emulator: its endpoint and the settings our code and dbt need to reach it."""

    endpoint: str
    project: str = "ch-pipeline-test"
    # The emulator ignores locations; EU is what production uses (.env.example).
    location: str = "EU"
    log_path: Path | None = field(default=None, repr=False)

    def client(self):
        """A google-cloud-bigquery client against the emulator (anonymous: it has no auth)."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        return bigquery.Client(
            project=self.project,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.endpoint},
        )

    def env(self, dataset: str) -> dict[str, str]:
        """Environment selecting BigQuery and pointing settings.py and ch_dbt's bigquery target here.

        dbt-bigquery reaches the emulator with ``method: oauth-secrets`` and any token (measured).
        """
        return {
            "CH_WAREHOUSE": "bigquery",
            "DBT_TARGET": "bigquery",
            "GCP_PROJECT": self.project,
            "BIGQUERY_DATASET": dataset,
            "BIGQUERY_LOCATION": self.location,
            "BIGQUERY_API_ENDPOINT": self.endpoint,
            "BIGQUERY_AUTH_METHOD": "oauth-secrets",
            "BIGQUERY_TOKEN": "dummy",
        }

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _die_with_parent() -> None:
    """Linux: the emulator gets SIGTERM when the test process dies, even if it is killed before
    fixture teardown (a CI timeout), so no server outlives its session."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _healthy(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/_crucible/health", timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def running_emulator(database: Path, log_path: Path, port: int | None = None) -> Iterator[BigQueryEmulator]:
    """``crucible serve --dialect bigquery`` on a loopback port, stopped when the block ends."""
    binary = ensure_emulator_venv()
    port = port or free_port()
    emulator = BigQueryEmulator(endpoint=f"http://127.0.0.1:{port}", log_path=log_path)
    cmd = [
        str(binary), "serve", "--dialect", "bigquery",
        "--host", "127.0.0.1", "--port", str(port),
        "--database", str(database),
    ]  # fmt: skip
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=os.environ.copy(), preexec_fn=_die_with_parent
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _healthy(emulator.endpoint):
            if process.poll() is not None:
                raise RuntimeError(f"crucible exited with code {process.returncode}:\n{emulator.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"crucible not healthy after {STARTUP_TIMEOUT_S}s:\n{emulator.log_tail()}")
            time.sleep(0.1)
        yield emulator
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def bigquery_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigQueryEmulator]:
    """One emulator for the session; tests keep apart by using their own dataset."""
    try:
        ensure_emulator_venv()
    except EmulatorUnavailable as exc:
        pytest.skip(f"BigQuery emulator unavailable: {EMULATOR_REQUIREMENT} could not be installed into {EMULATOR_VENV}: {exc}")
    root = tmp_path_factory.mktemp("bigquery_emulator")
    with running_emulator(root / "emulator.duckdb", root / "crucible.log") as emulator:
        yield emulator


@pytest.fixture
def bigquery_dataset(bigquery_emulator: BigQueryEmulator) -> Iterator[str]:
    """A fresh, empty dataset on the emulator, deleted with its tables afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    client = bigquery_emulator.client()
    client.create_dataset(name)
    try:
        yield name
    finally:
        client.delete_dataset(name, delete_contents=True, not_found_ok=True)
        client.close()


if __name__ == "__main__":
    try:
        print(f"BigQuery emulator ready: {ensure_emulator_venv()}")
    except EmulatorUnavailable as exc:
        sys.exit(f"could not create {EMULATOR_VENV}: {exc}")
