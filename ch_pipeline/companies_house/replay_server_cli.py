"""``ch-pipeline replay-server``: the replay server (``replay_server.py``) in the foreground, with its faults."""

from __future__ import annotations

import click

from ch_pipeline.companies_house.events import write_events
from ch_pipeline.companies_house.replay_server import MAX_CONNECTIONS_PER_KEY, STREAM_TIMEPOINT_BASE, ReplayServer
from ch_pipeline.companies_house.stream_events import generate_stream_events
from ch_pipeline.companies_house.streams import COMPANIES, STREAM_NAMES


@click.command("replay-server")
@click.option("--port", default=8765, show_default=True, help="Loopback port to listen on.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--events", "events", default=1000, show_default=True, help="Distinct events to serve (plus a few duplicates).")
@click.option("--rate", default=None, type=float, help="Events per second on each connection (default: as fast as possible).")
@click.option("--seed", default=0, show_default=True, help="Seed of the event generator (same seed, same events).")
@click.option("--first-timepoint", default=1, show_default=True)
@click.option("--retain", default=None, type=int, help="Only the last N timepoints can be resumed from (older: 416).")
@click.option("--heartbeat", default=5.0, show_default=True, help="Seconds between heartbeat lines when idle.")
@click.option("--api-key", default=None, help="Require this key as basic-auth user (else 401).")
@click.option("--drop-after", default=None, type=int, help="Fault: cut each connection mid-line after N events.")
@click.option("--max-drops", default=None, type=int, help="Fault: cut at most this many connections.")
@click.option("--split-lines", is_flag=True, help="Fault: send every line in two chunks.")
@click.option("--fail-status", default=None, type=click.Choice(["429", "500", "502", "503", "504"]),
              help="Fault: answer --fail-requests requests with this status and an HTML page.")
@click.option("--fail-requests", default=1, show_default=True)
@click.option("--max-connections", default=MAX_CONNECTIONS_PER_KEY, show_default=True,
              help="Open streams one key may hold at once; one more gets 429.")
@click.option("--write-events", "events_file", default=None, type=click.Path(dir_okay=False),
              help="Only write the events as NDJSON to this file, then exit.")
@click.option("--stream", "stream_name", default=COMPANIES, show_default=True, type=click.Choice(STREAM_NAMES),
              help="With --write-events: the stream whose events to write, with the timepoints the server serves.")
def replay_server_command(port, host, events, rate, seed, first_timepoint, retain, heartbeat, api_key, drop_after,
                          max_drops, split_lines, fail_status, fail_requests, max_connections, events_file, stream_name) -> None:  # fmt: skip
    """Serve generated events of every Companies House stream over the streaming protocol (foreground)."""
    from ch_pipeline.processes import stop_requested

    if events_file:
        # The timepoints the server would serve for this stream.
        first = first_timepoint + STREAM_TIMEPOINT_BASE[stream_name] - 1
        write_events(events_file, generate_stream_events(stream_name, events, seed, first))
        click.echo(f"wrote {events} {stream_name} events (+ duplicates) to {events_file}")
        return
    server = ReplayServer(
        events=events, seed=seed, rate=rate, first_timepoint=first_timepoint, retain=retain,
        heartbeat_interval=heartbeat, api_key=api_key, drop_after=drop_after, max_drops=max_drops,
        split_lines=split_lines, host=host, port=port, max_connections_per_key=max_connections,
    )  # fmt: skip
    if fail_status:
        server.fail_next(int(fail_status), fail_requests)
    try:
        server.start()
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port} ({exc}): pass --port with a free port") from exc
    click.echo(f"replay server ready: CH_STREAM_URL={server.url} ({len(server.lines)} lines, seed {seed}); "
               f"other streams at {server.url_for('officers').rsplit('/', 1)[0]}/<stream path>")
    with stop_requested() as stop:
        try:
            while not stop.wait(1.0):
                pass
        finally:
            server.stop()
        click.echo("replay server stopped")
