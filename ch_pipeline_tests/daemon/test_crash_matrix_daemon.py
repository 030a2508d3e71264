"""Exactly-once as users run it: faults under the real daemon, and the pipeline converging by itself.

The scenarios share one running deployment (``stack.DaemonStack``, started once for the module:
broker, replay server, producer, gRPC code server, ``dagster-daemon``, the project's
``dagster.yaml``). The replay server is gated: each scenario lets its own part of the history go
(bursts, or a trickle at a rate), injects its faults (SIGKILL of a run worker at a fault point
armed in the real worker, of the daemon, of the code server, of the producer), restarts only what
it killed, and then waits, doing nothing else, for the pipeline to converge: no test code lands,
requests or re-executes anything. The verdict, over everything delivered so far: every Kafka offset
landed exactly once in ``company_house_stream`` ∪ ``company_house_stream_rejects``, the watermark
at Kafka's last offset of every partition, ``company_house_core`` equal to the ground truth of the
served events, no duplicates; within a bound (measured on a shared 2-core machine, plus margin).
Each scenario starts from the converged state the previous one left.
"""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import psutil
import pytest
from dagster._core.storage.dagster_run import DagsterRunStatus
from dagster._core.storage.tags import AUTO_RETRY_RUN_ID_TAG

from ch_pipeline.defs.stream import OFFSETS_TAG
from ch_pipeline_tests.daemon import faults
from ch_pipeline_tests.daemon.conftest import ScenarioOutcome
from ch_pipeline_tests.daemon.stack import DaemonStack, StackConfig, builds_core, run_kind

SNAPSHOT, DELETIONS, CORE, WATERMARK = "snapshot_streamed_data", "company_house_deletions", "company_house_core", "get_last_timestamp"
MODELS = {SNAPSHOT, DELETIONS, CORE, WATERMARK}
DBT_FAULTS = ((SNAPSHOT, CORE), (CORE, WATERMARK))  # (last model recorded, next model) at the kill
FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
STARTED = {DagsterRunStatus.STARTED}

HISTORY_EVENTS = 1200
SENSOR_INTERVAL = 2
# Bounds in seconds, on a shared 2-core machine: the measured figures are in each test's docstring.
# Every run is a fresh process (5-30 s to start here, depending on the load of the machine), runs in
# the duckdb pool go one at a time, and a kill costs: the code server sees the dead worker (0.5 s),
# run monitoring frees its pool slot 5 s after the run ended (polling every 5 s), run retries
# launch the retry, which queues behind at most one other run and one dbt build.
WARM_UP_BOUND = 300.0  # bulk load + first landing + first (full) dbt build, from a cold instance
RUN_WORKERS_BOUND = 150.0
PROCESSES_BOUND = 150.0
# After the last event is produced: one sensor interval + one landing + one dbt build + launch
# overheads (each run a fresh process); with a held build, counted from the end of that build.
QUIET_TAIL_BOUND = 90.0
FAULT_WAIT = 420.0  # for every armed fault point to be reached by some run
HOLD_BUILD_SECONDS = 20


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    """The deployment, every process started, the stream gated (nothing released yet)."""
    root = tmp_path_factory.mktemp("daemon-stack")
    with DaemonStack(root, StackConfig(events=HISTORY_EVENTS, sensor_interval=SENSOR_INTERVAL, gated=True)) as running:
        yield running


def _retry_chain(stack: DaemonStack, run_id: str) -> list:
    """The run and its automatic retries, in order."""
    chain, run = [], stack.instance.get_run_by_id(run_id)
    while run is not None:
        chain.append(run)
        run = stack.instance.get_run_by_id(run.tags[AUTO_RETRY_RUN_ID_TAG]) if AUTO_RETRY_RUN_ID_TAG in run.tags else None
    return chain


def _retry_decided(stack: DaemonStack, run: dg.DagsterRun, timeout: float = 30) -> dg.DagsterRun:
    """The failed run once run retries have said whether they re-launch it (``dagster/will_retry``)."""
    deadline = time.monotonic() + timeout
    while run.tags.get("dagster/will_retry") is None and time.monotonic() < deadline:
        time.sleep(0.5)
        run = stack.instance.get_run_by_id(run.run_id)
    return run


def _builds_left(stack: DaemonStack) -> bool:
    """A core build queued or in flight, or a failed one that run retries will re-launch."""
    return any(builds_core(run) for run in [*stack.in_flight(), *stack.pending_retries()])


def _retry_chain_root(stack: DaemonStack, run: dg.DagsterRun) -> dg.DagsterRun:
    """The first run of ``run``'s retry chain."""
    return stack.instance.get_run_by_id(run.tags.get("dagster/root_run_id", run.run_id))


def _wait_failed(stack: DaemonStack, run_id: str) -> None:
    """The code server marks a run whose worker died as failed (``_check_for_orphaned_runs``)."""
    run = stack.wait_run_status(run_id, FINISHED, timeout=60)
    assert run.status == DagsterRunStatus.FAILURE, f"run {run_id} of a killed worker ended {run.status}"


def _start_from_converged(stack: DaemonStack) -> None:
    """A scenario starts from a settled pipeline (where the previous one left it; run alone, from a
    first burst landed and built on the fresh deployment)."""
    if stack.replay.history == 0:
        stack.release(60)
    stack.converge(timeout=WARM_UP_BOUND)
    stack.last_fault_at = None


def test_run_workers_killed_mid_landing_and_mid_build(stack: DaemonStack, record_outcome):
    """Landing run workers SIGKILL themselves inside the DuckDB transaction before COMMIT, before the
    write, and after the commit before Dagster recorded the materialization; dbt run workers (and
    their ``dbt`` child) are SIGKILLed by the test between snapshot and core and between core and
    watermark, on incremental builds. Two bursts of events, so the faults hit several landings.

    Recovery, all by the pipeline: the code server marks each run failed, run monitoring frees its
    ``duckdb`` pool slot, run retries re-launch it (a landing replaces its offsets; a dbt retry
    re-runs the whole build), the automation requests builds for what landed. The mid-write kill is
    also the regression test of a dead run holding the pool slot for ever: later landings and
    builds succeed and no slot is left claimed.

    It runs first, on the fresh deployment: the bulk load and the first (full) build overlap it,
    and the dbt fault points fire on incremental builds only.

    Measured here (shared 2-core machine): converged 29-34 s after the last kill (the whole test 3-4 min).
    """
    for name in faults.LANDING_FAULTS:
        faults.arm(stack.fault_dir, name)
    faults.arm(stack.fault_dir, faults.dbt_hold_after(SNAPSHOT), faults.INCREMENTAL)
    pending = {*faults.LANDING_FAULTS, faults.dbt_hold_after(SNAPSHOT)}
    stack.release(150)
    second_burst = False
    killed: dict[str, dict] = {}  # fault point -> its fired record
    deadline = time.monotonic() + FAULT_WAIT
    while pending:
        assert time.monotonic() < deadline, f"fault points {sorted(pending)} never reached\n{stack.diagnostics()}"
        stack.check_alive()
        for name in sorted(pending):
            record = faults.fired(stack.fault_dir, name)
            if record is None:
                continue
            pending.discard(name)
            killed[name] = record
            if name in faults.LANDING_FAULTS:
                stack.fault(f"landing run SIGKILLed itself: {name}", at=record["at"])
                continue
            # A held dbt build: Dagster recorded `done`, not `following`; kill the worker and its dbt.
            done, following = next(pair for pair in DBT_FAULTS if faults.dbt_hold_after(pair[0]) == name)
            materialized = stack.materialized_in_run(record["run_id"]) & MODELS
            assert done in materialized and following not in materialized, (name, materialized)
            assert stack.kill_run_worker(record["run_id"], f"dbt run worker SIGKILLed between {done} and {following}")
            if done == SNAPSHOT:
                faults.arm(stack.fault_dir, faults.dbt_hold_after(CORE), faults.INCREMENTAL)
                pending.add(faults.dbt_hold_after(CORE))
        if not second_burst and any(builds_core(r) and r.status != DagsterRunStatus.QUEUED for r in stack.runs()):
            # A second burst once a build has started: its landing comes after that build, so an
            # incremental build follows (where the dbt faults fire), and more landings to kill.
            stack.release(150)
            second_burst = True
        time.sleep(0.2)
    for record in killed.values():
        _wait_failed(stack, record["run_id"])

    convergence = stack.converge(timeout=RUN_WORKERS_BOUND + 120)
    verdict = convergence.verdict
    assert verdict.ok, verdict.summary()

    # Every killed landing run was retried, and a retry landed the same offsets.
    for name in faults.LANDING_FAULTS:
        chain = _retry_chain(stack, killed[name]["run_id"])
        assert chain[-1].status == DagsterRunStatus.SUCCESS, f"{name}: {[(r.run_id[:8], r.status) for r in chain]}"
        assert {r.tags[OFFSETS_TAG] for r in chain} == {chain[0].tags[OFFSETS_TAG]}
    # The dead mid-write run did not keep the duckdb pool: runs that started after it succeeded.
    died_at = killed[faults.LANDING_DURING_WRITE]["at"]
    later = [r.dagster_run for r in stack.instance.get_run_records() if r.start_time and r.start_time > died_at]
    assert any(run_kind(r).startswith("landing") and r.status == DagsterRunStatus.SUCCESS for r in later), "no landing succeeded after it"
    assert any(builds_core(r) and r.status == DagsterRunStatus.SUCCESS for r in later), "no dbt build succeeded after it"
    assert stack.wait_pool_free() == [], "a slot of the duckdb pool is still claimed"
    # A killed dbt build was retried, and the retry re-ran the whole build (one execution set).
    for done, _ in DBT_FAULTS:
        chain = _retry_chain(stack, killed[faults.dbt_hold_after(done)]["run_id"])
        assert len(chain) >= 2, f"the dbt run killed after {done} was not retried"
        assert chain[-1].status == DagsterRunStatus.SUCCESS, [(r.run_id[:8], r.status) for r in chain]
        assert stack.materialized_in_run(chain[-1].run_id) >= MODELS, "the successful retry built every model"

    stats = stack.run_stats()
    record_outcome(ScenarioOutcome(
        "run workers killed",
        "landing mid-write (in the transaction), before write, after write; dbt between snapshot/core and core/watermark",
        f"code server failed the {stats.failed} dead runs, run retries recovered {stats.recovered}; runs {stats.by_kind}",
        convergence.seconds_after_last_fault, RUN_WORKERS_BOUND, "exact" if verdict.ok else verdict.summary(),
    ))  # fmt: skip
    assert convergence.seconds_after_last_fault <= RUN_WORKERS_BOUND, stack.diagnostics()


def test_quiet_tail_reaches_the_core_including_a_landing_behind_a_build(stack: DaemonStack, record_outcome):
    """After the last event, with no further data, the core reaches it within one sensor interval +
    one landing + one build (+ margin). Twice: a plain burst; then a burst whose dbt build is held
    (a marker-armed sleep, the ``duckdb`` pool slot held) while the final burst arrives, so that
    the last landing queues behind the build in the pool and lands just after that
    build started (the race that once lost the trigger): the automation must still request the
    build that takes it.

    Measured here (shared 2-core machine): plain 33-44 s; after the held build ended 24-42 s.
    """
    _start_from_converged(stack)
    # A plain quiet tail.
    stack.release(100)
    plain = stack.converge(timeout=QUIET_TAIL_BOUND + 120)
    assert plain.verdict.ok, plain.verdict.summary()
    produced_at = stack.last_event_produced_at()
    landed_at = stack.last_landing_at()
    reached_at = stack.core_reached(landed_at)
    plain_tail = reached_at - produced_at

    # The last landing behind a held build.
    faults.arm(stack.fault_dir, faults.DBT_HOLD_BUILD, str(HOLD_BUILD_SECONDS))
    stack.release(100)
    held = faults.wait_fired(stack.fault_dir, faults.DBT_HOLD_BUILD, timeout=QUIET_TAIL_BOUND + 120)
    stack.release(50)  # the final burst arrives while the build holds the pool
    convergence = stack.converge(timeout=QUIET_TAIL_BOUND + HOLD_BUILD_SECONDS + 120)
    verdict = convergence.verdict
    assert verdict.ok, verdict.summary()
    held_run = stack.instance.get_run_record_by_id(held["run_id"])
    assert held_run.dagster_run.status == DagsterRunStatus.SUCCESS
    produced_at = stack.last_event_produced_at()
    landed_at = stack.last_landing_at()
    assert landed_at > held_run.start_time, "the last landing ended after the held build had started"
    reached_at = stack.core_reached(landed_at)
    assert reached_at is not None, "no build took the last landing"
    held_tail = reached_at - max(produced_at, held_run.end_time)

    build_seconds = [done - start for _, start, done in stack.builds()]
    record_outcome(ScenarioOutcome(
        "quiet tail",
        f"none; then the last landing queued behind a build held {HOLD_BUILD_SECONDS}s",
        f"plain: core reached the last event {plain_tail:.1f}s after it entered Kafka; held: the last landing ended "
        f"{landed_at - held_run.end_time:+.1f}s after the held build ended, the core reached it {held_tail:.1f}s after "
        f"that build ended (dbt builds took {min(build_seconds):.0f}-{max(build_seconds):.0f}s)",
        max(plain_tail, held_tail), QUIET_TAIL_BOUND, "exact" if verdict.ok else verdict.summary(),
    ))  # fmt: skip
    assert plain_tail <= QUIET_TAIL_BOUND, stack.diagnostics()
    assert held_tail <= QUIET_TAIL_BOUND, stack.diagnostics()


def test_dbt_build_killed_at_every_attempt_at_the_tail(stack: DaemonStack, record_outcome):
    """The last events land; the dbt build that would take them is SIGKILLed, and so is every retry
    run retries gives it (max_retries + 1 attempts): that build is abandoned, and no more data comes.
    The pipeline must still build the core (the automation requests a new build), or the core stays
    behind Kafka for good.

    Found by the 10-minute soak (random kills exhausted a dbt build's retries; later landings
    happened to trigger a new build) and reproduced here at the tail, where none follows: the
    automation counted the abandoned build as having seen the last landing, and never built again.
    Fixed in ``InputLandedAfterLastBuild`` (ch_pipeline/defs/dbt.py).
    """
    _start_from_converged(stack)
    attempts = stack.instance.run_retries_max_retries + 1
    killed: list = []
    # Each attempt is held before dbt starts (its pool slot taken) and killed there: none of them
    # writes anything, whatever the machine's load, so only a new build can take the burst. The burst
    # may land in more than one landing run, each building after it lands: every build attempt is
    # killed, until run retries gave up on them all.
    faults.clear_fired(stack.fault_dir, faults.DBT_HOLD_BUILD)  # fired by an earlier test of the module
    faults.arm(stack.fault_dir, faults.DBT_HOLD_BUILD, str(RUN_WORKERS_BOUND))
    stack.release(60)
    while True:
        held = faults.wait_fired(stack.fault_dir, faults.DBT_HOLD_BUILD, timeout=RUN_WORKERS_BOUND + 60)
        faults.clear_fired(stack.fault_dir, faults.DBT_HOLD_BUILD)
        faults.arm(stack.fault_dir, faults.DBT_HOLD_BUILD, str(RUN_WORKERS_BOUND))  # for a retry, or another build
        assert stack.kill_run_worker(held["run_id"], f"dbt build attempt {len(killed) + 1} SIGKILLed"), held
        run = stack.wait_run_status(held["run_id"], FINISHED, timeout=60)
        assert run.status == DagsterRunStatus.FAILURE
        killed.append(_retry_decided(stack, run))
        if not _builds_left(stack):
            break
    faults.disarm(stack.fault_dir, faults.DBT_HOLD_BUILD)  # the build the automation requests must run
    last = killed[-1]
    assert len(killed) >= attempts and last.tags.get("dagster/will_retry") == "false", "run retries gave up on the builds"
    assert len(_retry_chain(stack, _retry_chain_root(stack, last).run_id)) == attempts, "every attempt of a build was killed"

    convergence = stack.converge(timeout=RUN_WORKERS_BOUND + 60)
    verdict = convergence.verdict
    assert verdict.ok, verdict.summary()
    last_started = stack.instance.get_run_record_by_id(last.run_id).start_time
    rescue = [b for b in stack.builds() if b[1] > last_started]
    assert rescue, "a build after the abandoned one took the last burst"
    record_outcome(ScenarioOutcome(
        "dbt retries exhausted",
        f"the tail builds and their retries SIGKILLed, {len(killed)} attempts ({', '.join(r.run_id[:8] for r in killed)})",
        f"run retries gave up; the automation requested build {rescue[0][0][:8] if rescue else '?'}",
        convergence.seconds_after_last_fault, RUN_WORKERS_BOUND, "exact" if verdict.ok else verdict.summary(),
    ))  # fmt: skip
    assert convergence.seconds_after_last_fault <= RUN_WORKERS_BOUND, stack.diagnostics()


def test_producer_daemon_and_code_server_killed(stack: DaemonStack, record_outcome):
    """While events trickle in: the producer is SIGKILLed mid-stream and restarted (it resumes from
    its checkpoint and re-sends what followed it); the daemon is SIGKILLed with runs queued or in
    flight and restarted; the code server is SIGKILLed with a run in flight (and none being
    launched: see the next test) and restarted. Run workers are the code server's children, but
    SIGKILL of the server alone orphans them: they finish their runs on their own.

    The daemon is not killed while it launches a run: that run stays STARTING with no worker
    until run monitoring fails it after ``start_timeout_seconds`` (180 s in dagster.yaml), and run
    retries then land it (measured: a 183 s stall of that landing, then converged exactly).

    Measured here (shared 2-core machine): converged 38-77 s after the last kill.
    """
    _start_from_converged(stack)
    messages_before = sum(stack.kafka_offsets()[1].values())
    served_before = len(stack.served_events())
    trickle = stack.trickle(200, rate=20.0)
    notes = []

    # Producer, mid-stream.
    checkpoint = stack.producer_checkpoint() or 0
    stack.wait_checkpoint(checkpoint + 60, timeout=60)
    time.sleep(0.6)  # between two checkpoints (one a second): delivered events not yet checkpointed
    stack.kill("producer")
    killed_at_checkpoint = stack.producer_checkpoint()
    time.sleep(1.0)
    stack.restart("producer")
    notes.append(f"producer killed at checkpoint {killed_at_checkpoint}, restarted: resumed from it")

    # Daemon, with runs queued or in flight, but not while it launches one (see the docstring).
    deadline, busy = time.monotonic() + 30, "with no run queued or in flight"
    while time.monotonic() < deadline:
        if any(r.status not in FINISHED for r in stack.runs()) and not stack.launching_now():
            busy = "with runs queued or in flight"
            break
        time.sleep(0.1)
    stack.kill("daemon")
    time.sleep(2.0)
    stack.restart("daemon")
    notes.append(f"daemon killed {busy}, restarted")

    # Code server, with a run in flight and none being launched through it (see the next test).
    deadline = time.monotonic() + 180
    while True:
        assert time.monotonic() < deadline, f"no run in flight without another being launched\n{stack.diagnostics()}"
        started = stack.runs([DagsterRunStatus.STARTED])
        if started and not stack.launching_now():
            run = started[0]
            worker = stack.worker_pid(run.run_id, timeout=5)
            stack.kill("code-server")
            break
        time.sleep(0.1)
    time.sleep(0.5)
    orphan_alive = psutil.pid_exists(worker) and psutil.Process(worker).status() != psutil.STATUS_ZOMBIE
    time.sleep(0.5)
    stack.restart("code-server")
    orphan_status = stack.wait_run_status(run.run_id, FINISHED, timeout=180).status
    notes.append(f"code server killed with a {run_kind(run)} run in flight: its worker "
                 f"{'lived on as an orphan' if orphan_alive else 'was gone'}, the run ended {orphan_status.value}")  # fmt: skip

    trickle.join(timeout=60)
    convergence = stack.converge(timeout=PROCESSES_BOUND + 120)
    verdict = convergence.verdict
    assert verdict.ok, verdict.summary()
    resent = (sum(verdict.kafka_ends.values()) - messages_before) - (len(stack.served_events()) - served_before)
    notes.append(f"{resent} events re-sent after the producer restart, landed and deduplicated")
    assert resent > 0, "the restarted producer re-sent what followed its checkpoint"
    assert orphan_status == DagsterRunStatus.SUCCESS, "the run in flight when its code server died finished"
    assert stack.wait_pool_free() == [], "a slot of the duckdb pool is still claimed"
    stats = stack.run_stats()
    record_outcome(ScenarioOutcome(
        "processes killed",
        "producer mid-stream; daemon with runs queued/in flight; code server with a run in flight",
        "; ".join(notes) + f"; runs so far {stats.by_kind}, {stats.failed} failed, {stats.recovered} recovered",
        convergence.seconds_after_last_fault, PROCESSES_BOUND, "exact" if verdict.ok else verdict.summary(),
    ))  # fmt: skip
    assert convergence.seconds_after_last_fault <= PROCESSES_BOUND, stack.diagnostics()


def test_code_server_killed_while_the_daemon_launches_a_run(stack: DaemonStack, record_outcome):
    """The code server is SIGKILLed while the daemon's run queue is launching a landing run through
    it (``StartRun`` in flight, the run STARTING), and restarted. The launch fails; the run must
    come back (re-queued, or retried) and land its offsets, and the pipeline converge.

    Found by this suite, and failing with the project's dagster.yaml as it is: the queue marks the
    run failed ("Caught an unrecoverable error while dequeuing the run"), run retries cannot create
    the retry while the code server is down ("Failed to retry run", ``dagster/will_retry=false``),
    and nothing requests those offsets again: its offsets never land. With the run coordinator's
    ``max_user_code_failure_retries`` set, the queue re-submits the run instead and it lands
    (measured: converged 50 s after two such kills). Last in the module: the lost landing keeps
    any later scenario from converging.
    """
    _start_from_converged(stack)
    trickle = stack.trickle(150, rate=20.0)
    deadline = time.monotonic() + 180
    while not (launching := [r for r in stack.launching_now() if run_kind(r).startswith("landing")]):
        assert time.monotonic() < deadline, f"no landing run launched within 180 s\n{stack.diagnostics()}"
        time.sleep(0.05)
    launching = launching[0]
    stack.kill("code-server")
    time.sleep(1.0)
    stack.restart("code-server")
    deadline = time.monotonic() + 60
    while (chain := _retry_chain(stack, launching.run_id))[-1].status == DagsterRunStatus.FAILURE:
        last = chain[-1]
        if last.tags.get("dagster/will_retry") == "false" or time.monotonic() > deadline:
            events = [
                f"{r.run_id[:8]}: " + "; ".join(e.dagster_event.message.splitlines()[0] for e in stack.instance.all_logs(r.run_id)
                                                if e.dagster_event and e.dagster_event.event_type_value == "ENGINE_EVENT"
                                                and "process" not in (e.dagster_event.message or ""))
                for r in chain
            ]  # fmt: skip
            raise AssertionError(
                f"the landing run of offsets {launching.tags[OFFSETS_TAG]}, being launched when the code server "
                f"died, failed and will not be retried (dagster/will_retry={last.tags.get('dagster/will_retry')}): its "
                f"offsets never land. Its events: {events}"
            )
        time.sleep(0.5)
    trickle.join(timeout=60)
    convergence = stack.converge(timeout=PROCESSES_BOUND + 120)
    verdict = convergence.verdict
    assert verdict.ok, verdict.summary()
    chain = _retry_chain(stack, launching.run_id)
    record_outcome(ScenarioOutcome(
        "code server killed mid-launch",
        "code server while the daemon launches a landing run",
        " -> ".join(f"{r.run_id[:8]} {r.status.value}" for r in chain),
        convergence.seconds_after_last_fault, PROCESSES_BOUND, "exact" if verdict.ok else verdict.summary(),
    ))  # fmt: skip
    assert convergence.seconds_after_last_fault <= PROCESSES_BOUND, stack.diagnostics()
