"""``ch-pipeline produce`` as a real process for tests: its environment, its start, its checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

_UNSET = ("KAFKA_CONFIG_FILE", "KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME",
          "KAFKA_SASL_PASSWORD", "CH_STREAM_API_KEY")  # fmt: skip


def producer_env(server_url: str, bootstrap: str, topic: str, checkpoint: Path, **extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in _UNSET}
    return {**env, "CH_STREAM_URL": server_url, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPIC": topic,
            "CH_CHECKPOINT_PATH": str(checkpoint), "CH_DATA_DIR": str(checkpoint.parent), **extra}  # fmt: skip


def start_producer(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ch_pipeline.cli", "produce", "--log-interval", "0.5", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def wait_for_checkpoint(path: Path, at_least: int, process: subprocess.Popen, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and (timepoint := json.loads(path.read_text())["timepoint"]) >= at_least:
            return timepoint
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint >= {at_least} after {timeout}s")
