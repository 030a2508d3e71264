"""A throwaway PostgreSQL cluster on a loopback port: the Dagster instance storage of ``prod-local``,
its tests and the Postgres benchmark (initdb and the server run as an unprivileged user when we are root)."""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ch_pipeline.kafka.broker import free_port
from ch_pipeline.processes import StartedInWith, send_signal

POSTGRES_OS_USER = "chpg"  # Postgres refuses to run as root: initdb and the server run as this user


def postgres_bin_dir() -> Path | None:
    """Where initdb, pg_ctl and postgres are (Debian's postgresql-NN, newest first, or PATH)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(re.sub(r"\D", "", p) or 0), reverse=True)
    if shutil.which("pg_ctl"):
        candidates.append(str(Path(shutil.which("pg_ctl")).parent))
    return next((Path(d) for d in candidates if all((Path(d) / b).exists() for b in ("initdb", "pg_ctl", "postgres"))), None)


def unprivileged_user(name: str) -> tuple[int, int] | None:
    """(uid, gid) to run a server as: ``name`` (a system user, created if missing) when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
                       check=True, capture_output=True)  # fmt: skip
        entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


@dataclass
class PostgresCluster(StartedInWith):
    """A throwaway cluster on a free loopback port: ``user`` (superuser, password auth over TCP) and ``db``."""

    root: Path
    user: str
    password: str = field(repr=False)
    db: str
    port: int = field(default_factory=free_port)
    bin_dir: Path | None = field(default_factory=postgres_bin_dir)
    started: bool = field(default=False, init=False)

    def _run(self, *argv: str, timeout: float = 120) -> None:
        ids = unprivileged_user(POSTGRES_OS_USER)
        kwargs = {"user": ids[0], "group": ids[1], "extra_groups": []} if ids else {}
        env = {"PATH": f"{self.bin_dir}:/usr/bin:/bin", "LC_ALL": "C", "PGPASSWORD": self.password}
        # Its own session: the server pg_ctl leaves behind gets no Ctrl-C meant for us.
        result = subprocess.run([str(self.bin_dir / argv[0]), *argv[1:]], env=env, cwd=self.root, capture_output=True, text=True,
                                timeout=timeout, start_new_session=True, **kwargs)  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stdout[-2000:]}{result.stderr[-2000:]}")

    def start(self) -> "PostgresCluster":
        if self.bin_dir is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: apt-get install postgresql-15")
        self.root.mkdir(parents=True)
        (self.root / "pwfile").write_text(self.password + "\n")
        ids = unprivileged_user(POSTGRES_OS_USER)
        if ids:
            for path in (self.root, self.root / "pwfile"):
                os.chown(path, *ids)
        self.root.chmod(0o700)
        # As the postgres image does: POSTGRES_USER is the superuser, passwords over TCP (scram).
        self._run("initdb", "-D", "data", "-U", self.user, "--pwfile", "pwfile", "-A", "scram-sha-256", "--auth-local", "trust",
                  "-E", "UTF8", "--locale", "C", "--no-sync")  # fmt: skip
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root}"
        self.started = True
        self._run("pg_ctl", "-D", "data", "-l", "postgres.log", "-w", "-t", "60", "-o", options, "start")
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, self.db)
        return self

    def stop(self) -> None:
        if self.started and (self.root / "data" / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "-D", "data", "-m", "fast", "-w", "-t", "20", "stop", timeout=30)
            except (RuntimeError, subprocess.TimeoutExpired):
                pid = int((self.root / "data" / "postmaster.pid").read_text().split()[0])
                send_signal(pid, signal.SIGKILL, group=False)
        self.started = False
        shutil.rmtree(self.root, ignore_errors=True)
