"""A stream client with test-sized backoff, and a way to take a few of its events."""

from __future__ import annotations

from ch_pipeline.companies_house.stream_client import Backoff, CompaniesHouseStream, StreamEvent


def fast_stream(url: str, timepoint: int | None = None, **kwargs) -> CompaniesHouseStream:
    return CompaniesHouseStream(url, timepoint=timepoint, backoff=Backoff(initial=0.01, cap=0.05), read_timeout=5, **kwargs)


def take(stream: CompaniesHouseStream, count: int) -> list[StreamEvent]:
    events = []
    for event in stream.events():
        events.append(event)
        if len(events) == count:
            break
    stream.stop()
    return events
