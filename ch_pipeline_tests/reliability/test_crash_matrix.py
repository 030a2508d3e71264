"""The crash matrix: one component SIGKILLed at one point, restarted, and the pipeline caught up.

For every fault point the outcome is measured against the ground truth of the served history
(``Pipeline.catch_up``): the core equals it, every Kafka offset is landed once and only once, and
the watermark never went backwards. The default run chains a component's fault points in one
scenario (each point still checked where it strikes); ``--reliability-full`` isolates each point
and runs more seeds. The outcome table is printed at the end of the session.
"""

from __future__ import annotations

import signal

import pytest

from ch_pipeline.kafka.checkpoint import read_checkpoint
from ch_pipeline.kafka.offsets import parse_partition_key
from ch_pipeline_tests.reliability.harness import Pipeline, assert_exact, faulty_landing, faulty_producer

KILLED = -signal.SIGKILL
# Paced so that a kill lands mid-history (the producer checkpoints once a second).
PRODUCER_RATE = 150.0
KILL_AFTER_DELIVERIES = 60


def test_without_a_fault_the_pipeline_reproduces_the_ground_truth(reliability_full: bool, history_seed: int, request):
    """The control row of the matrix: the same steps, no fault (full mode only: every faulty
    scenario of the default run ends with the same exact comparison)."""
    if not reliability_full:
        pytest.skip("the control scenario runs with --reliability-full")
    pipeline: Pipeline = request.getfixturevalue("pipeline")
    pipeline.produce_all()
    assert_exact(pipeline.catch_up("none (control)"))


def test_producer_killed(pipeline: Pipeline, producer_faults: tuple[str, ...]):
    """``ch-pipeline produce`` SIGKILLed around its delivery reports and checkpoint; each restart
    resumes from the checkpoint and re-sends what followed it (duplicates downstream dedupes)."""
    pipeline.server.rate = PRODUCER_RATE
    resumed_from = [None]
    for fault_point in producer_faults:
        assert faulty_producer(pipeline, fault_point, KILL_AFTER_DELIVERIES) == KILLED, fault_point
        checkpoint = read_checkpoint(pipeline.checkpoint_path, pipeline.server.url)
        assert checkpoint is not None and checkpoint < pipeline.server.timepoints[-1], f"{fault_point}: killed mid-history"
        assert resumed_from[-1] is None or checkpoint >= resumed_from[-1], "the checkpoint never goes backwards"
        resumed_from.append(checkpoint)
    pipeline.server.rate = None
    pipeline.produce_all()  # the last restart, unharmed, to the end of the history
    outcome = pipeline.catch_up("producer: " + ", ".join(producer_faults))
    assert_exact(outcome)
    assert outcome.kafka_messages > outcome.events_served, "events after a checkpoint were re-sent (and deduplicated)"


def test_landing_run_killed(pipeline: Pipeline, landing_faults: tuple[str, ...]):
    """A real landing run (child process sharing the instance and the DuckDB file) SIGKILLed before,
    during (inside the transaction) or after its warehouse write; re-executed later."""
    pipeline.produce_all()
    keys = pipeline.tick()
    assert len(keys) > len(landing_faults), "a landing for each fault, and one landed normally"
    pipeline.land(keys[0])
    for key, fault_point in zip(keys[1:], landing_faults):
        before = pipeline.stream_rows()
        assert faulty_landing(pipeline, key, fault_point) == KILLED, fault_point
        after = pipeline.stream_rows()
        if fault_point == "landing_after_write":
            offsets = {(r.partition, o) for r in parse_partition_key(key) for o in range(r.first, r.last + 1)}
            assert {(p, o) for p, o, _ in after} - {(p, o) for p, o, _ in before} == offsets, "committed before the kill"
        else:
            assert after == before, f"{fault_point}: a run killed before its commit leaves no row behind"
        assert key in pipeline.missing_landings(), f"{fault_point}: the killed run recorded no materialization"
    assert_exact(pipeline.catch_up("landing run: " + ", ".join(p.removeprefix("landing_") for p in landing_faults)))


def test_sensor_killed_between_requesting_runs_and_saving_its_cursor(pipeline: Pipeline):
    """The tick's runs are launched and land, its cursor is lost; the next tick starts from the old cursor
    and, since more messages arrived meanwhile, cuts different (overlapping) ranges."""
    pipeline.produce_all(at_most=len(pipeline.server.lines) // 2)
    launched = pipeline.tick(save_cursor=False)
    for key in launched:
        pipeline.land(key)
    pipeline.produce_all()
    recut = pipeline.tick()
    assert set(recut) != set(launched), "the lost cursor made the next tick cut different ranges over the same offsets"
    for key in recut:
        pipeline.land(key)
    assert_exact(pipeline.catch_up("sensor: between run requests and cursor save"))


def test_dbt_killed_mid_build(pipeline: Pipeline, dbt_faults: tuple[tuple[str, str], ...]):
    """``dbt build`` SIGKILLed after a model committed and before the next ran, on an incremental build;
    new data lands between the faults, and the next full build catches up."""
    share = len(pipeline.server.lines) // (len(dbt_faults) + 1)
    pipeline.produce_all(at_most=share)
    pipeline.land_everything_new()
    pipeline.dbt()
    for _, last_model_done in dbt_faults:
        pipeline.produce_all(at_most=share)
        pipeline.land_everything_new()
        assert pipeline.dbt_killed_after(last_model_done) == KILLED
    pipeline.produce_all()
    assert_exact(pipeline.catch_up("dbt: " + ", ".join(point for point, _ in dbt_faults)))
