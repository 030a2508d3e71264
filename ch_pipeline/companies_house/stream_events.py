"""Events of every Companies House stream, generated alike, and the ground truth of each.

- ``generate_stream_events(stream_name, n, seed=0, first_timepoint=1)``: like ``events.generate_events``
  (which it returns unchanged for ``companies``): ``n`` distinct events with consecutive timepoints,
  the occasional duplicate right after its original, ``deleted`` events without ``data``, items created
  and then changed (``fields_changed`` names what changed). Deterministic for a seed, and independent
  per stream: the same seed gives each stream its own sequence.
- ``final_items(stream_name, events, received_at=None)`` -> ``{(company_number, item_id): row}``: the
  current items after ``events``, keyed as Companies House keys them (``streams.item_key_of``), the
  latest event per item winning by the companies' order rule (``events.event_order``), ``deleted``
  removing the item. A row: ``company_number``, ``item_id``, ``resource_kind``, the stream's
  ``row_fields`` (``None`` when missing) and ``published_at``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ch_pipeline.companies_house.events import (
    _DELETE_RATE,
    _DUPLICATE_RATE,
    _FIRST_PUBLISHED_AT,
    _REPEAT_RATE,
    company_number_of,
    event_bytes,
    event_order,
    generate_events,
)
from ch_pipeline.companies_house.stream_items import ItemFactory, item_factory
from ch_pipeline.companies_house.streams import COMPANIES, StreamSpec, field_at, item_key_of, stream

# The exemptions stream publishes with microseconds and a Z (seen on the real stream, streams.py
# sources); the others as the companies stream does. Downstream order rules must read both.
_PRECISE_PUBLISHED_AT = {"company-exemptions"}


def generate_stream_events(stream_name: str, n: int, seed: int = 0, first_timepoint: int = 1) -> list[dict]:
    """``n`` distinct realistic events of one stream (timepoints ``first_timepoint ..``) plus duplicates."""
    spec = stream(stream_name)
    if spec.name == COMPANIES:
        return generate_events(n, seed, first_timepoint)  # byte-identical to what it always was
    # A string seed: each stream its own deterministic sequence (str seeds hash with SHA-512, stable across runs).
    rng = random.Random(f"{seed}/{spec.name}")
    generator = _ItemEventGenerator(spec, rng, item_factory(spec.name, rng), company_numbers(seed, max(20, n // 4)))
    events: list[dict] = []
    for index in range(n):
        event = generator.next_event(first_timepoint + index)
        events.append(event)
        if rng.random() < _DUPLICATE_RATE:
            events.append(json.loads(event_bytes(event)))  # the API can send an event twice
    return events


def company_numbers(seed: int, count: int) -> list[str]:
    """Company numbers of the companies stream for the same seed: the other streams' items belong to
    companies the companies stream knows, so a company overview joins them."""
    return list(dict.fromkeys(company_number_of(event) for event in generate_events(count, seed)))


def final_items(
    stream_name: str, events: Iterable[dict], received_at: Callable[[dict], datetime | None] | None = None
) -> dict[tuple[str | None, str], dict]:
    """The expected current-state table of a stream after ``events`` (see the module docstring)."""
    spec = stream(stream_name)
    latest: dict[tuple[str | None, str], tuple[tuple[datetime, int], dict]] = {}
    for event in events:
        key = item_key_of(spec, event)
        order = event_order(event, received_at(event) if received_at else None)
        current = latest.get(key)
        if current is None or order >= current[0]:
            latest[key] = (order, event)
    return {key: item_row(spec, event) for key, (_, event) in latest.items() if event["event"]["type"] != "deleted"}


def item_row(spec: StreamSpec, event: dict) -> dict:
    company, item_id = item_key_of(spec, event)
    data = event.get("data") or {}
    row = {"company_number": company, "item_id": item_id, "resource_kind": event.get("resource_kind")}
    row.update({column: field_at(data, path) for column, path in spec.row_fields})
    row["published_at"] = event["event"]["published_at"]
    return row


@dataclass
class _ItemEventGenerator:
    spec: StreamSpec
    rng: random.Random
    factory: ItemFactory
    companies: list[str]
    items: dict[str, tuple[str, dict]] = field(default_factory=dict)  # resource_uri -> (resource_kind, data)
    live_uris: list[str] = field(default_factory=list)  # for an O(1), seed-stable random pick
    published_at: datetime = _FIRST_PUBLISHED_AT

    def next_event(self, timepoint: int) -> dict:
        self.published_at += timedelta(seconds=self.rng.choice([0, 0, 1, 1, 2, 7]))
        roll = self.rng.random()
        if self.live_uris and roll < _DELETE_RATE:
            index = self.rng.randrange(len(self.live_uris))
            self.live_uris[index], self.live_uris[-1] = self.live_uris[-1], self.live_uris[index]
            uri = self.live_uris.pop()
            kind, _ = self.items.pop(uri)
            return self._envelope(kind, uri, None, "deleted", timepoint, [])
        if self.live_uris and roll < _DELETE_RATE + _REPEAT_RATE:
            uri = self.rng.choice(self.live_uris)
            kind, previous = self.items[uri]
            data, changed = self.factory.update(self.factory, previous)
        else:
            kind, uri, data = self.factory.new(self.factory, self.rng.choice(self.companies))
            changed = []
            if uri in self.items:  # one item per company (insolvency, exemptions): that item changes instead
                kind, previous = self.items[uri]
                data, changed = self.factory.update(self.factory, previous)
            else:
                self.live_uris.append(uri)
        self.items[uri] = (kind, data)
        return self._envelope(kind, uri, data, "changed", timepoint, changed)

    def _envelope(self, kind: str, uri: str, data: dict | None, event_type: str, timepoint: int, changed: list[str]) -> dict:
        _, resource_id = item_key_of(self.spec, {"resource_uri": uri})
        envelope: dict = {"resource_kind": kind, "resource_uri": uri, "resource_id": resource_id}
        if data is not None:
            envelope["data"] = data
        if self.spec.name in _PRECISE_PUBLISHED_AT:
            micros = self.rng.randrange(10**6)
            published = (self.published_at + timedelta(microseconds=micros)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        else:
            published = self.published_at.strftime("%Y-%m-%dT%H:%M:%S")
        event: dict = {"timepoint": timepoint, "published_at": published, "type": event_type}
        if changed:
            event["fields_changed"] = changed
        envelope["event"] = event
        return envelope
