"""The producer's resume point: the last timepoint up to which every event is in Kafka (or, when
Kafka refuses it for good, in the producer's dead-letter file).

``DeliveryTracker`` turns delivery reports, which can arrive out of order across partitions, into
that timepoint; ``write_checkpoint`` stores it atomically, so a crash at any instant leaves either
the old or the new checkpoint on disk, never a torn one.
"""

from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path


class CheckpointError(RuntimeError):
    """The checkpoint file cannot be used as a resume point; the message says what to do."""


@dataclass(frozen=True)
class Checkpoint:
    timepoint: int
    stream_url: str


def read_checkpoint(path: str | Path, stream_url: str) -> int | None:
    """The checkpointed timepoint for ``stream_url``, or None when there is no checkpoint yet."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
        checkpoint = Checkpoint(int(stored["timepoint"]), str(stored["stream_url"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a producer checkpoint ({exc}): fix or delete it") from exc
    if checkpoint.stream_url != stream_url:
        # Timepoints of one stream mean nothing to another (the replay server vs the real API).
        raise CheckpointError(
            f"{path} holds a timepoint of {checkpoint.stream_url}, not of {stream_url}: "
            "delete it (restart from now) or point CH_CHECKPOINT_PATH at this stream's checkpoint"
        )
    return checkpoint.timepoint


def write_checkpoint(path: str | Path, timepoint: int, stream_url: str) -> None:
    """Write via a temp file, fsync and rename: the file always holds a whole checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    with temp.open("w") as out:
        json.dump({"timepoint": timepoint, "stream_url": stream_url}, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


class _InFlight:
    __slots__ = ("timepoint", "settled")

    def __init__(self, timepoint: int | None) -> None:
        self.timepoint = timepoint
        self.settled = False  # delivered or dead-lettered


class DeliveryTracker:
    """Messages in the order they were produced; the checkpoint moves past a message only when it
    and every message before it have been delivered or dead-lettered. A failed delivery pins the
    checkpoint before it; so does a refused one until the producer has dead-lettered it.
    """

    def __init__(self, checkpoint: int | None) -> None:
        self.safe_timepoint = checkpoint
        self.delivered = 0
        self.failed = 0
        self.dead_lettered = 0
        self._in_flight: deque[_InFlight] = deque()
        self._refused: list[tuple[_InFlight, str, bytes | None, bytes]] = []

    def sent(self, timepoint: int | None) -> _InFlight:
        entry = _InFlight(timepoint)
        self._in_flight.append(entry)
        return entry

    def on_delivered(self, entry: _InFlight) -> None:
        self.delivered += 1
        self._settle(entry)

    def on_failed(self, entry: _InFlight) -> None:
        self.failed += 1  # stays at the head of the queue: the checkpoint never passes it

    def on_refused(self, entry: _InFlight, reason: str, key: bytes | None, value: bytes) -> None:
        """Kafka will never take this message (too large, invalid): kept, still pinning the checkpoint,
        until the producer takes it to write it to the dead-letter file. Delivery reports run inside
        poll(), so the file is written by the producer's loop, not here."""
        self._refused.append((entry, reason, key, value))

    def take_refused(self) -> list[tuple[_InFlight, str, bytes | None, bytes]]:
        refused, self._refused = self._refused, []
        return refused

    def on_dead_lettered(self, entry: _InFlight) -> None:
        """The refused message is durably in the dead-letter file: the checkpoint may pass it."""
        self.dead_lettered += 1
        self._settle(entry)

    def _settle(self, entry: _InFlight) -> None:
        entry.settled = True
        while self._in_flight and self._in_flight[0].settled:
            done = self._in_flight.popleft()
            if done.timepoint is not None:
                self.safe_timepoint = done.timepoint

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)
