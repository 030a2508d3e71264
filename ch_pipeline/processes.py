"""Child processes and signals: the one way every command and stack starts, stops and is stopped.

A child starts in its own session (``start_new_session``), so it is its own process group:
- a ``dagster dev`` started in the background from a non-interactive shell ignores SIGINT and SIGTERM,
  and Dagster's processes leave grandchildren (code server, run workers) that outlive their parent;
  so a child is stopped by signalling its whole group: SIGTERM, its grace period, SIGKILL, and then
  whatever descendant left the group;
- Ctrl-C at a terminal reaches only the parent, which stops its children in order (``stop_requested``)
  instead of every process dying at once (a producer flushing to a broker already gone).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


@contextmanager
def stop_requested() -> Iterator[threading.Event]:
    """SIGINT and SIGTERM set the event instead of raising, so shutdown runs in order, once.

    The previous handlers are back after the block. Use in the main thread (Python's signal rule).
    """
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def send_signal(pid: int, sig: int, group: bool = True) -> None:
    """Signal the process group led by ``pid`` (a ``Child``), or with ``group=False`` that process only;
    one already gone is fine."""
    try:
        os.killpg(pid, sig) if group else os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def venv_executable(name: str) -> str:
    """A console script beside this interpreter: the venv need not be on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


@dataclass
class Child:
    """One child process in its own process group, its output appended to ``log`` (or discarded).

    ``start()`` again starts it anew with the same command (a restart); ``stop()`` stops the group.
    """

    name: str
    argv: list[str]
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    log: Path | None = None
    grace: float = 20.0  # seconds between SIGTERM and SIGKILL
    announce: bool = False  # write "$ <command>" to the log before each start
    process: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> "Child":
        out = self.log.open("ab") if self.log else None
        try:
            if out and self.announce:
                out.write(f"$ {shlex.join(self.argv)}\n".encode())
                out.flush()
            self.process = subprocess.Popen(
                self.argv, env=None if self.env is None else dict(self.env), cwd=self.cwd, stdin=subprocess.DEVNULL,
                stdout=out or subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        finally:
            if out:
                out.close()  # the child has its own copy
        return self

    @property
    def returncode(self) -> int | None:
        """None while it runs (or before it started)."""
        return None if self.process is None else self.process.poll()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, lines: int = 30) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        stop_children([self])


def stop_children(children: Iterable[Child]) -> None:
    """Stop children together: SIGTERM every running group, wait out the grace periods at once, then
    SIGKILL the groups (grandchildren stay in a group after its leader exits) and every descendant
    that left its group."""
    children = [c for c in children if c.process is not None]
    running = [c for c in children if c.process.poll() is None]
    strays = _descendants(c.process.pid for c in running)
    for child in running:
        send_signal(child.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + max((c.grace for c in running), default=0)
    for child in running:
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for child in children:
        send_signal(child.process.pid, signal.SIGKILL)
        child.process.wait()
    for process in strays:
        try:
            process.kill()
        except Exception:  # noqa: BLE001 - psutil.NoSuchProcess: gone already
            pass


def _descendants(pids: Iterable[int]) -> list:
    """Every descendant of ``pids`` now (psutil processes); none if psutil is not installed."""
    try:
        import psutil
    except ImportError:
        return []
    family = []
    for pid in pids:
        try:
            family += psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
    return family


class StartedInWith:
    """``with thing as t:`` starts it, and stops it after the block, also when ``start()`` itself fails."""

    def start(self):  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
