"""The event generator: realistic, deterministic, and a ground truth the later stages can trust."""

from __future__ import annotations

import json
import re
from collections import Counter

from ch_pipeline.companies_house.events import (
    company_number_of,
    event_bytes,
    final_companies,
    generate_events,
    read_events,
    timepoint_of,
    write_events,
)


def test_same_seed_same_events_and_another_seed_differs():
    assert generate_events(300, seed=5) == generate_events(300, seed=5)
    assert generate_events(300, seed=5) != generate_events(300, seed=6)


def test_timepoints_are_consecutive_and_duplicates_repeat_the_same_bytes():
    events = generate_events(2000, seed=1, first_timepoint=1000)
    timepoints = [timepoint_of(e) for e in events]
    assert sorted(set(timepoints)) == list(range(1000, 3000))
    assert timepoints == sorted(timepoints), "stream order is timepoint order"
    repeated = [tp for tp, count in Counter(timepoints).items() if count > 1]
    assert 10 <= len(repeated) <= 150, "the occasional duplicate"
    for tp in repeated:
        copies = {event_bytes(e) for e in events if timepoint_of(e) == tp}
        assert len(copies) == 1


def test_events_look_like_the_real_stream():
    events = generate_events(3000, seed=2)
    numbers = [company_number_of(e) for e in events]
    assert all(re.fullmatch(r"([A-Z]{2}\d{6}|R0\d{6}|\d{8})", n) for n in numbers)
    prefixes = {n[:2] for n in numbers if n[:2].isalpha()}
    assert {"SC", "NI", "OC", "SO", "FC", "LP"} <= prefixes
    assert any(n.startswith("00") for n in numbers), "leading zeros"
    assert Counter(numbers).most_common(1)[0][1] >= 3, "repeated updates of one company"

    changed = [e for e in events if e["event"]["type"] == "changed"]
    deleted = [e for e in events if e["event"]["type"] == "deleted"]
    assert deleted and all("data" not in e for e in deleted)
    assert all(e["resource_uri"] == f"/company/{e['resource_id']}" for e in events)
    names = [e["data"]["company_name"] for e in changed]
    assert any(not name.isascii() for name in names) and any("'" in n or '"' in n for n in names)
    assert any("registered_office_address" not in e["data"] for e in changed)
    assert any("postal_code" not in e["data"].get("registered_office_address", {"postal_code": 1}) for e in changed)
    assert len({e["data"]["company_status"] for e in changed}) >= 5
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", e["data"]["date_of_creation"]) for e in changed)
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}", e["event"]["published_at"]) for e in events)


def test_event_bytes_are_one_utf8_json_line_that_round_trips():
    for event in generate_events(200, seed=3):
        raw = event_bytes(event)
        assert b"\n" not in raw
        assert json.loads(raw.decode("utf-8")) == event


def test_company_number_comes_from_data_else_from_the_resource_uri():
    assert company_number_of({"resource_uri": "/company/SC000123", "data": {"company_number": "SC000123"}}) == "SC000123"
    assert company_number_of({"resource_uri": "/company/00001234", "event": {}}) == "00001234"


def test_final_companies_applies_updates_in_order_and_removes_deleted(tmp_path):
    events = generate_events(1500, seed=4)
    truth = final_companies(events)
    latest = {}
    for event in events:
        latest[company_number_of(event)] = event
    assert set(truth) == {n for n, e in latest.items() if e["event"]["type"] == "changed"}
    number, row = next(iter(truth.items()))
    assert row["company_name"] == latest[number]["data"]["company_name"]
    assert read_events(write_events(tmp_path / "events.ndjson", events)) == events
