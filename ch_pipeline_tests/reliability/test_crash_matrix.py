"""The crash matrix: one component SIGKILLed at one point, restarted, and the pipeline caught up.

For every fault point the outcome is measured against the ground truth of the served history
(``Pipeline.catch_up``): the core equals it, every Kafka offset is landed once and only once, and
the watermark never went backwards. The outcome table is printed at the end of the session.
"""

from __future__ import annotations

import signal

import pytest

from ch_pipeline.kafka.checkpoint import read_checkpoint
from ch_pipeline_tests.reliability.harness import Pipeline, assert_exact, faulty_landing, faulty_producer

KILLED = -signal.SIGKILL
# Paced so that the producer writes a few checkpoints before the history ends (one per second).
PRODUCER_RATE = 150.0


def test_without_a_fault_the_pipeline_reproduces_the_ground_truth(pipeline: Pipeline):
    """The control row of the matrix: the same steps, no fault."""
    pipeline.produce_all()
    assert_exact(pipeline.catch_up("none (control)"))


@pytest.mark.parametrize("fault_point", ["before_delivery_report", "after_delivery_report", "between_delivery_and_checkpoint"])
def test_producer_killed(pipeline: Pipeline, fault_point: str):
    pipeline.server.rate = PRODUCER_RATE
    assert faulty_producer(pipeline, fault_point) == KILLED
    resume_at = read_checkpoint(pipeline.checkpoint_path, pipeline.server.url)
    assert resume_at is not None and resume_at < pipeline.server.timepoints[-1], "killed mid-history"
    pipeline.server.rate = None
    pipeline.produce_all()  # the restart resumes from the checkpoint; what followed it is re-sent
    outcome = pipeline.catch_up(f"producer: {fault_point}")
    assert_exact(outcome)
    assert outcome.kafka_messages > outcome.events_served, "the kill left events in Kafka past the checkpoint (re-sent)"


@pytest.mark.parametrize("fault_point", ["landing_before_write", "landing_during_write", "landing_after_write"])
def test_landing_run_killed(pipeline: Pipeline, fault_point: str):
    pipeline.produce_all()
    keys = pipeline.tick()
    assert len(keys) > 1, "several stream partitions, so the killed one is one of many"
    for key in keys[:-1]:
        pipeline.land(key)
    before = pipeline.stream_rows()
    assert faulty_landing(pipeline, keys[-1], fault_point) == KILLED
    if fault_point != "landing_after_write":
        assert pipeline.stream_rows() == before, "a run killed before its commit leaves no row behind"
    assert pipeline.missing_partitions() == [keys[-1]], "the killed run recorded no materialization"
    assert_exact(pipeline.catch_up(f"landing run: {fault_point.removeprefix('landing_')}"))


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


@pytest.mark.parametrize(
    ("fault_point", "last_model_done"),
    [("between snapshot and core", "company_house_deletions"), ("between core and watermark", "company_house_core")],
)
def test_dbt_killed_mid_build(pipeline: Pipeline, fault_point: str, last_model_done: str):
    pipeline.produce_all(at_most=len(pipeline.server.lines) // 2)
    pipeline.land_everything_new()
    pipeline.dbt()
    pipeline.produce_all()
    pipeline.land_everything_new()
    assert pipeline.dbt_killed_after(last_model_done) == KILLED
    assert_exact(pipeline.catch_up(f"dbt: {fault_point}"))

