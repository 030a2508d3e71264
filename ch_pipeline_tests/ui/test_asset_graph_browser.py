"""The real Dagster webserver in a real browser (Debian's chromium driven by Playwright).

Opens the asset graph of the project's code location and checks that the whole lineage is on it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import requests

from ch_pipeline.kafka.broker import free_port
from ch_pipeline.processes import Child

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ASSETS_ON_GRAPH = [
    "company_house_streaming_api",
    "company_house_topic",
    "company_house_stream",
    "company_house_bulk",
    "snapshot_streamed_data",
    "company_house_core",
    "get_last_timestamp",
]  # (company_house_bulk_reconciliations is on it too, its long name shortened in the node)
STREAM_LANDING = "p0:0-4,p1:0-4"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="no chromium: `apt-get install -y chromium` (make test does this where it can) to run the browser test",
)


def land_one_stream_range(home: Path, data: Path, bootstrap: str) -> None:
    """A real landing run into the instance the webserver will show."""
    import dagster as dg
    from confluent_kafka import Producer

    from ch_pipeline.defs.resources import KafkaResource, WarehouseResource
    from ch_pipeline.defs.stream import company_house_stream, landing_run_config
    from ch_pipeline.kafka.broker import create_topic

    create_topic(bootstrap, "company_house", 2)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for partition in (0, 1):
        for n in range(5):
            number = f"0{partition}00000{n}"
            flat = {"company_name": f"UI TEST {n} LTD", "company_number": number, "company_status": "active",
                    "date_of_creation": "2020-01-01", "postal_code": "EC1A 1BB", "published_at": "2026-01-01T00:00:00"}  # fmt: skip
            producer.produce("company_house", key=number, value=json.dumps(flat), partition=partition)
    assert producer.flush(10) == 0
    with dg.DagsterInstance.from_config(str(home)) as instance:
        result = dg.materialize(
            [company_house_stream],
            run_config=landing_run_config(STREAM_LANDING),
            instance=instance,
            resources={
                "kafka": KafkaResource(bootstrap_servers=bootstrap, topic="company_house"),
                "warehouse": WarehouseResource(duckdb_path=str(data / "warehouse.duckdb")),
            },
        )
        assert result.success


@pytest.fixture(scope="module")
def dagster_webserver(tmp_path_factory, broker):
    home = tmp_path_factory.mktemp("dagster_home")
    data = tmp_path_factory.mktemp("data")
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    land_one_stream_range(home, data, broker.bootstrap_servers)
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "CH_DATA_DIR": str(data), "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers}
    # Stopped as every stack is (ch_pipeline.processes): its whole group, SIGKILL after the grace. A
    # `dagster dev` started without a terminal ignores SIGTERM, so a long grace only waited it out (30 s).
    webserver = Child(
        "dagster dev", [str(Path(sys.executable).parent / "dagster"), "dev", "-h", "127.0.0.1", "-p", str(port)],
        env=env, cwd=REPO, log=home / "dagster-dev.log", grace=3,
    ).start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert webserver.running, webserver.tail(200)
            try:
                if requests.get(f"{url}/server_info", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        else:
            pytest.fail("dagster dev did not answer /server_info within 120 s")
        yield url
    finally:
        webserver.stop()


def test_asset_graph_shows_the_whole_lineage(dagster_webserver, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 3000, "height": 1600})
        # The companies path's group (every other stream has a group of its own, so the global graph
        # shows groups, not assets).
        page.goto(f"{dagster_webserver}/locations/ch_pipeline/asset-groups/company_house/lineage", wait_until="networkidle", timeout=60_000)
        skip = page.get_by_role("button", name="Skip")
        if skip.count():  # first visit: "Join the Dagster community" dialog over the graph
            skip.first.click()
        for asset in ASSETS_ON_GRAPH:
            page.get_by_text(asset, exact=True).first.wait_for(state="visible", timeout=60_000)
        page.screenshot(path=str(tmp_path / "asset_graph.png"), full_page=True)

        # The stream asset's events: the landing names its offset ranges.
        page.goto(f"{dagster_webserver}/assets/company_house_stream?view=events", wait_until="networkidle", timeout=60_000)
        page.get_by_text(STREAM_LANDING).first.wait_for(state="visible", timeout=60_000)
        page.screenshot(path=str(tmp_path / "stream_landings.png"), full_page=True)
        browser.close()
    assert (tmp_path / "asset_graph.png").stat().st_size > 10_000
    assert (tmp_path / "stream_landings.png").stat().st_size > 10_000
