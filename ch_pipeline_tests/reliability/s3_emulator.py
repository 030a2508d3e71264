"""A local S3 emulator (PyPI ``moto[server]``) so the local broker can keep its data across a restart.

docs/architecture.md §9: tansu's ``--storage-engine s3://BUCKET/`` against moto kept topics, records and offsets
through a broker restart; the memory engine keeps nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ch_pipeline.kafka.broker import LocalBroker, free_port, port_is_taken

BUCKET = "ch-pipeline-broker"
REGION = "eu-west-2"


def moto_server_executable() -> str | None:
    beside = Path(sys.executable).parent / "moto_server"
    return str(beside) if beside.exists() else shutil.which("moto_server")


@contextmanager
def s3_emulator(log_path: Path) -> Iterator[dict[str, str]]:
    """A running moto S3 server with the broker's bucket; yields the broker's environment for it."""
    import boto3

    executable = moto_server_executable()
    assert executable, "moto_server is missing: pip install -e '.[test]' (moto[server] is a test dependency)"
    port = free_port()
    with log_path.open("ab") as log:
        process = subprocess.Popen([executable, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not port_is_taken(port):
            assert process.poll() is None and time.monotonic() < deadline, f"moto_server did not start; see {log_path}"
            time.sleep(0.05)
        endpoint = f"http://127.0.0.1:{port}"
        # Any credentials: the emulator checks none. They are not secrets.
        env = {"AWS_ACCESS_KEY_ID": "emulator", "AWS_SECRET_ACCESS_KEY": "emulator", "AWS_DEFAULT_REGION": REGION,
               "AWS_ENDPOINT": endpoint, "AWS_ALLOW_HTTP": "true"}  # fmt: skip
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                          aws_access_key_id="emulator", aws_secret_access_key="emulator")  # fmt: skip
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        yield env
    finally:
        process.terminate()
        process.wait(timeout=10)


def persistent_broker(env: dict[str, str], log_path: Path) -> LocalBroker:
    """A broker (not started) whose data lives in the emulator's bucket; restartable on the same port."""
    return LocalBroker(port=free_port(), storage_engine=f"s3://{BUCKET}/", env=env, log_path=log_path)
