"""``ch-pipeline produce`` that SIGKILLs itself at the fault point named by ``CH_FAULT_POINT``.

The hooks wrap the producer module's own functions from outside (nothing in production code):
- ``before_delivery_report``: a delivery report arrives; the process dies before the tracker sees it.
- ``after_delivery_report``: dies right after the tracker counted a delivery, before any checkpoint.
- ``between_delivery_and_checkpoint``: deliveries are confirmed, the checkpoint write that records
  them is about to happen: dies before it.
Each fires only once ``CH_FAULT_AFTER_DELIVERIES`` deliveries were reported and a checkpoint was
written in this process, so the kill lands mid-history with a checkpoint behind it and events in
flight or unrecorded after it.
"""

import os
import signal

from ch_pipeline.kafka import producer

FAULT_POINT = os.environ["CH_FAULT_POINT"]
ARMED_AFTER_DELIVERIES = int(os.environ["CH_FAULT_AFTER_DELIVERIES"])
deliveries = 0
checkpoints_written = 0


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


original_write_checkpoint = producer.write_checkpoint
original_on_delivery = producer._on_delivery


def armed() -> bool:
    return deliveries >= ARMED_AFTER_DELIVERIES and checkpoints_written >= 1


def write_checkpoint(*args, **kwargs):
    global checkpoints_written
    if FAULT_POINT == "between_delivery_and_checkpoint" and armed():
        die()
    original_write_checkpoint(*args, **kwargs)
    checkpoints_written += 1


def on_delivery(tracker, entry, err, msg):
    global deliveries
    if FAULT_POINT == "before_delivery_report" and armed():
        die()
    original_on_delivery(tracker, entry, err, msg)
    deliveries += 1
    if FAULT_POINT == "after_delivery_report" and armed():
        die()


producer.write_checkpoint = write_checkpoint
producer._on_delivery = on_delivery

if __name__ == "__main__":
    producer.produce_command.main(args=["--log-interval", "0.5"], prog_name="ch-pipeline produce")
