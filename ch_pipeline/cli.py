"""The ``ch-pipeline`` command line (docs/architecture.md §10).

Commands live beside the code they drive and are imported only when invoked, so
``ch-pipeline --help`` is instant and one command's heavy imports never slow another.
"""

from __future__ import annotations

import importlib
import sys

import click

# command name -> "module:attribute" of a click.Command
_COMMANDS = {
    "broker": "ch_pipeline.cli:broker_command",
    "run": "ch_pipeline.local_stack:run_command",
    "demo": "ch_pipeline.demo:demo_command",
    "replay-server": "ch_pipeline.companies_house.replay_server_cli:replay_server_command",
    "produce": "ch_pipeline.kafka.producer:produce_command",
    "prod-local": "ch_pipeline.production_stack:prod_local_command",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise click.ClickException(
                f"`{cmd_name}` needs {exc.name!r}, which is not installed: run `make setup` (or `pip install -e .`)"
            ) from exc
        return getattr(module, attribute)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """ch-pipeline: Companies House stream -> Kafka -> Dagster -> dbt, in near real time."""


@click.command("broker")
@click.option("--port", default=9092, show_default=True, help="Loopback port to listen on.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--topic", default=None, help="Also create this topic (e.g. company_house).")
@click.option("--partitions", default=2, show_default=True, help="Partitions for --topic.")
def broker_command(port: int, host: str, topic: str | None, partitions: int) -> None:
    """Run the embedded Kafka-protocol broker (tansu) in the foreground until Ctrl-C.

    Memory storage: topics and messages are gone when it stops.
    """
    from ch_pipeline.kafka.broker import BrokerError, LocalBroker
    from ch_pipeline.processes import stop_requested

    broker = LocalBroker(port=port, host=host)
    with stop_requested() as stop:
        try:
            broker.start()
        except BrokerError as exc:
            raise click.ClickException(str(exc)) from exc
        try:
            if topic:
                created = broker.create_topic(topic, partitions)
                click.echo(f"topic {topic}: {'created' if created else 'exists'} ({partitions} partitions)")
            click.echo(f"broker ready: KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers}", err=False)
            sys.stdout.flush()
            while broker.running and not stop.wait(0.5):
                pass  # until SIGINT/SIGTERM, or the broker exits by itself
        finally:
            broker.stop()
    click.echo("broker stopped")


if __name__ == "__main__":
    main()
