"""Every stream's generator and ground truth: realistic, deterministic, keyed as Companies House keys items."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from ch_pipeline.companies_house.events import event_bytes, final_companies, generate_events, timepoint_of
from ch_pipeline.companies_house.stream_events import final_items, generate_stream_events
from ch_pipeline.companies_house.streams import STREAM_NAMES, STREAMS, field_at, item_key_of, kafka_key_of, stream

OTHER_STREAMS = [name for name in STREAM_NAMES if name != "companies"]


def test_the_companies_stream_is_the_companies_generator_byte_for_byte():
    # Pinned before the other streams existed: demos and tests depend on these exact bytes.
    digest = hashlib.sha256(b"\n".join(event_bytes(e) for e in generate_events(500, seed=7))).hexdigest()
    assert digest == "2f37e070c43872e8d2241188733ba8ab704ba0ef83477be0775979aae605270d"
    assert generate_stream_events("companies", 500, seed=7) == generate_events(500, seed=7)


@pytest.mark.parametrize("name", OTHER_STREAMS)
def test_each_stream_is_deterministic_consecutive_and_duplicates_repeat_the_same_bytes(name):
    events = generate_stream_events(name, 1500, seed=5, first_timepoint=300)
    assert events == generate_stream_events(name, 1500, seed=5, first_timepoint=300)
    assert events != generate_stream_events(name, 1500, seed=6, first_timepoint=300)
    timepoints = [timepoint_of(e) for e in events]
    assert timepoints == sorted(timepoints) and sorted(set(timepoints)) == list(range(300, 1800))
    repeated = [tp for tp, count in Counter(timepoints).items() if count > 1]
    assert repeated, "the occasional duplicate"
    assert all(len({event_bytes(e) for e in events if timepoint_of(e) == tp}) == 1 for tp in repeated)


@pytest.mark.parametrize("name", OTHER_STREAMS)
def test_each_stream_has_every_kind_the_envelope_and_the_fields_users_query(name):
    spec = stream(name)
    events = generate_stream_events(name, 3000, seed=2)
    assert {e["resource_kind"] for e in events} == set(spec.resource_kinds)
    deleted = [e for e in events if e["event"]["type"] == "deleted"]
    changed = [e for e in events if e["event"]["type"] == "changed"]
    assert deleted and all("data" not in e for e in deleted)
    assert any(e["event"].get("fields_changed") for e in changed), "updates name what changed"
    for event in events:
        company, item_id = item_key_of(spec, event)
        assert event["resource_id"] == item_id, "resource_id is the item id, as on the real stream"
        assert kafka_key_of(spec, event) == (company if spec.under_company else item_id)
        self_link = (event.get("data") or {}).get("links", {}).get("self")  # insolvency records have none
        if self_link:
            assert self_link.lstrip("/") == event["resource_uri"].lstrip("/")
    for column, path in spec.row_fields:
        assert any(field_at(e["data"], path) not in (None, []) for e in changed), f"{column} is never filled"


def test_item_keys_follow_the_resource_uri_as_companies_house_keys_items():
    officer = {"resource_uri": "/company/08314130/appointments/6pa-Y4neUHkESSGTC20iBKDXg9I", "resource_id": "6pa-Y4neUHkESSGTC20iBKDXg9I"}
    assert item_key_of(stream("officers"), officer) == ("08314130", "6pa-Y4neUHkESSGTC20iBKDXg9I")
    psc = {"resource_uri": "/company/09145694/persons-with-significant-control/individual/bIhuKnMFctSnjrDjUG8n3NgOrlU"}
    assert item_key_of(stream("persons-with-significant-control"), psc) == ("09145694", "bIhuKnMFctSnjrDjUG8n3NgOrlU")
    exemptions = {"resource_uri": "company/14438833/exemptions", "resource_id": "14438833"}  # no leading slash, as sent
    assert item_key_of(stream("company-exemptions"), exemptions) == ("14438833", "14438833")
    assert kafka_key_of(stream("company-exemptions"), exemptions) == "14438833"
    disqualified = {"resource_uri": "/disqualified-officers/corporate/Q8J9tnY4", "data": {"company_number": "01234567"}}
    assert item_key_of(stream("disqualified-officers"), disqualified) == (None, "Q8J9tnY4")
    assert kafka_key_of(stream("disqualified-officers"), disqualified) == "Q8J9tnY4", "not the registration number in data"


@pytest.mark.parametrize("name", STREAM_NAMES)
def test_ground_truth_keeps_the_latest_event_per_item_and_drops_deleted_items(name):
    spec = STREAMS[name]
    events = generate_stream_events(name, 2000, seed=4)
    truth = final_items(name, events)
    latest = {}
    for event in events:  # generated published_at never goes backwards, so stream order is event order
        latest[item_key_of(spec, event)] = event
    assert set(truth) == {key for key, event in latest.items() if event["event"]["type"] == "changed"}
    assert len(truth) < len(latest), "some items were deleted"
    key, row = next(iter(truth.items()))
    assert (row["company_number"], row["item_id"]) == key
    assert row["published_at"] == latest[key]["event"]["published_at"]
    for column, path in spec.row_fields:
        assert row[column] == field_at(latest[key]["data"], path)


def test_a_deleted_item_disappears_and_a_later_change_brings_it_back():
    spec = stream("charges")
    events = generate_stream_events("charges", 2000, seed=8)
    deleted = next(e for e in events if e["event"]["type"] == "deleted")
    key = item_key_of(spec, deleted)
    assert key not in final_items("charges", events[: events.index(deleted) + 1])
    revived = {**deleted, "data": {"status": "outstanding"}, "event": {**deleted["event"], "type": "changed", "timepoint": 10**6}}
    assert final_items("charges", [*events, revived])[key]["status"] == "outstanding"


def test_the_companies_ground_truth_agrees_with_final_companies():
    events = generate_events(1500, seed=4)
    companies = final_companies(events)
    by_item = final_items("companies", events)
    assert {company for company, _ in by_item} == set(companies)
    for (number, _), row in by_item.items():
        assert {column: row[column] for column in companies[number]} == companies[number]
