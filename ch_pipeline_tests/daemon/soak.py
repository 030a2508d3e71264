"""The soak: a continuous stream through the whole deployment while a chaos loop SIGKILLs run workers.

``run_soak`` starts a ``DaemonStack`` whose replay server streams its history at a steady rate for
``stream_seconds``; every ``kill_every`` seconds (uniformly random in the range) it SIGKILLs the
worker of a random run in flight, with its descendants (a dbt run's ``dbt``). When the stream has
ended the chaos stops and the pipeline is left to converge by itself; then the verdict. Used by
``test_soak.py`` (2 minutes) and ``python -m benchmarks.soak`` (10 minutes and more).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from dagster._core.storage.dagster_run import DagsterRunStatus

from ch_pipeline_tests.daemon.stack import DaemonStack, RunStats, StackConfig, Verdict, run_kind

SOAK_SEED = 17
SOAK_RATE = 5.0  # events per second
# The Kafka and automation sensors tick every 15 s, as under `ch-pipeline run` (each tick with new
# data is a landing run, a fresh process: a shorter interval makes more runs than 2 cores can start).
SOAK_SENSOR_INTERVAL = 15


@dataclass
class Kill:
    at: float  # seconds since the stream started
    run_id: str
    kind: str
    pids: list[int]


@dataclass
class SoakResult:
    stream_seconds: float
    events_served: int
    kafka_messages: int
    kills: list[Kill]
    stats: RunStats
    converge_after_stream_end: float
    converge_after_last_kill: float | None
    verdict: Verdict
    pool_claims_left: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.verdict.ok and not self.pool_claims_left

    def lines(self) -> list[str]:
        kinds: dict[str, int] = {}
        for kill in self.kills:
            kinds[kill.kind] = kinds.get(kill.kind, 0) + 1
        return [
            f"stream: {self.stream_seconds:.0f} s, {self.events_served} events served, {self.kafka_messages} Kafka messages",
            f"runs: {self.stats.total} ({', '.join(f'{k} {v}' for k, v in sorted(self.stats.by_kind.items()))})",
            f"runs killed (SIGKILL of the worker and its children): {len(self.kills)} ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})",
            f"runs failed: {self.stats.failed}; recovered (a retry succeeded): {self.stats.recovered}; "
            f"not recovered: {len(self.stats.unrecovered)}",
            f"time to converge after the stream ended: {self.converge_after_stream_end:.1f} s"
            + (f" (after the last kill: {self.converge_after_last_kill:.1f} s)" if self.converge_after_last_kill is not None else ""),
            f"duckdb pool slots left claimed: {len(self.pool_claims_left)}",
            f"verdict: {'exact' if self.verdict.ok else 'WRONG'}: {self.verdict.summary()}",
        ]


def pick_victim(stack: DaemonStack, rng: random.Random) -> str | None:
    """A random run in flight whose worker process is alive."""
    candidates = []
    for run in stack.runs([DagsterRunStatus.STARTED]):
        try:
            pid = stack.worker_pid(run.run_id, timeout=0)
        except AssertionError:
            continue
        if psutil.pid_exists(pid):
            candidates.append(run.run_id)
    return rng.choice(sorted(candidates)) if candidates else None


def run_soak(
    root: Path,
    stream_seconds: float,
    kill_every: tuple[float, float],
    rate: float = SOAK_RATE,
    sensor_interval: int = SOAK_SENSOR_INTERVAL,
    seed: int = SOAK_SEED,
    converge_timeout: float = 600.0,
    log: Callable[[str], None] = print,
) -> SoakResult:
    rng = random.Random(seed)
    config = StackConfig(events=int(rate * stream_seconds), seed=seed, rate=rate, sensor_interval=sensor_interval)
    with DaemonStack(root, config) as stack:
        started = time.monotonic()
        kills: list[Kill] = []
        next_kill = started + rng.uniform(*kill_every)
        while not stack.producer_done():
            stack.check_alive()
            now = time.monotonic()
            if now >= next_kill:
                victim = pick_victim(stack, rng)
                if victim is not None:
                    run = stack.instance.get_run_by_id(victim)
                    pids = stack.kill_run_worker(victim, f"chaos: SIGKILL {run_kind(run)} run {victim[:8]}")
                    if pids:
                        kills.append(Kill(now - started, victim, run_kind(run), pids))
                        log(f"  {now - started:6.1f}s  killed the worker of {run_kind(run)} run {victim[:8]} (pids {pids})")
                        next_kill = now + rng.uniform(*kill_every)
                        continue
                next_kill = now + 0.5  # nothing in flight right now: try again shortly
            time.sleep(0.2)
        stream_ended = time.monotonic()
        log(f"  {stream_ended - started:6.1f}s  stream ended; the pipeline converges on its own")
        convergence = stack.converge(timeout=converge_timeout)
        after_stream = time.monotonic() - stream_ended
        claims = stack.wait_pool_free()
        stats = stack.run_stats()
        return SoakResult(
            stream_seconds=stream_ended - started,
            events_served=len(stack.replay.lines),
            kafka_messages=convergence.verdict.kafka_messages,
            kills=kills,
            stats=stats,
            converge_after_stream_end=after_stream,
            converge_after_last_kill=convergence.seconds_after_last_fault,
            verdict=convergence.verdict,
            pool_claims_left=claims,
        )
