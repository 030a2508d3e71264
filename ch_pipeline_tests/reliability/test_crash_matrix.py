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
    pipeline.land_everything_new()
    pipeline.dbt()
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
