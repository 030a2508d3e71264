"""The current-state models of the non-companies streams and the company overview (issue 15), with
real dbt on DuckDB (and once on the offline BigQuery emulator).

Per stream: the landing table (the contract, stream_landing.py) filled from the generators' events in
two batches; after the first build (the models' first-build branch) and after the second (the
incremental merge, which re-ranks only the items the second batch touched: batch 1 was landed three
days before) each `*_current` model equals the ground truth `stream_events.final_items`. Batch 2 also
holds the hard cases, built for every stream: two events of one item in the same second in two Kafka
partitions (the later timepoint wins, not the higher offset), an older event re-sent with a new
timepoint (loses), an older event of a deleted item re-sent after the deletion (stays deleted), and a
deletion of a live item (disappears). company_overview equals a Python computation from the truth.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from ch_pipeline.companies_house.bulk_csv import write_sample
from ch_pipeline.companies_house.events import event_bytes
from ch_pipeline.companies_house.stream_events import final_items, generate_stream_events
from ch_pipeline.companies_house.streams import STREAMS, StreamSpec
from ch_pipeline.kafka.offsets import OffsetRange
from ch_pipeline.warehouse.duckdb_warehouse import DuckDBWarehouse
from ch_pipeline.warehouse.landing import LandingBatch
from ch_pipeline.warehouse.stream_rows import RAW_SCHEMA, parse_raw_messages
from ch_pipeline_tests.dbt.conftest import configure_environment, load_bulk
from ch_pipeline_tests.dbt.stream_landing import (
    DATE_FIELDS,
    INT_FIELDS,
    JSON_FIELDS,
    Landed,
    Topic,
    contract_rows,
    deletion,
    land_bigquery,
    land_duckdb,
    published_at,
    specs,
    tagged,
)
from ch_pipeline_tests.dbt.test_event_order import dbt_build

SEED = 5
COMPANIES = 60
EVENTS = 240  # per stream; the first FIRST_BATCH in batch 1
FIRST_BATCH = 160
DBT_PROJECT = Path(__file__).resolve().parents[2] / "ch_dbt"


@dataclass
class StreamHistory:
    """One stream's two batches with their Kafka coordinates, and the truth after each."""

    spec: StreamSpec
    batches: list[list[Landed]] = field(default_factory=list)

    def truth(self, through: int) -> dict:
        landed = [item for batch in self.batches[: through + 1] for item in batch]
        received = {id(item.event): item.kafka_timestamp for item in landed}
        return final_items(self.spec.name, [item.event for item in landed], lambda event: received[id(event)])


def history(spec: StreamSpec) -> StreamHistory:
    events = generate_stream_events(spec.name, EVENTS, seed=SEED)
    topic = Topic(spec)
    first = [topic.place(event) for event in events[:FIRST_BATCH]]
    second = [topic.place(event) for event in events[FIRST_BATCH:]]
    result = StreamHistory(spec, [first, second])
    # The hard cases, after every generated event.
    timepoint = max(event["event"]["timepoint"] for event in events)
    late = max(published_at(event) for event in events) + timedelta(minutes=1)
    live = result.truth(1)
    by_item: dict[tuple, list[dict]] = {}
    for event in events:
        by_item.setdefault(_key(spec, event), []).append(event)
    live_keys = [key for key in by_item if key in live]
    deleted_keys = [key for key in by_item if key not in live and any(e["event"]["type"] == "changed" for e in by_item[key])]
    # y: an item whose first change is older (published_at) than its latest event.
    y = next(key for key in live_keys if published_at(by_item[key][0]) < published_at(by_item[key][-1]))
    x, w = [key for key in live_keys if key != y][:2]
    latest_x = by_item[x][-1]
    # Same second, two partitions: timepoint+1 at p1 with a high offset, timepoint+2 at p0 with a low
    # one (partition or offset would pick the older; the timepoint picks the newer).
    older = tagged(spec, latest_x, "X SAME SECOND OLDER", timepoint + 1, late)
    newer = tagged(spec, latest_x, "X SAME SECOND NEWER", timepoint + 2, late)
    second.append(topic.place(older, partition=1, offset=max(topic.next_offset) + 1000))
    second.append(topic.place(newer, partition=0, offset=topic.next_offset[0]))
    # An older event re-sent with a new timepoint (its old published_at): loses to the newer change.
    first_y = next(e for e in by_item[y] if e["event"]["type"] == "changed")
    second.append(topic.place(tagged(spec, first_y, "Y RESENT OLD", timepoint + 3)))
    # A deleted item's older change re-sent after the deletion: stays deleted.
    if deleted_keys:
        first_z = next(e for e in by_item[deleted_keys[0]] if e["event"]["type"] == "changed")
        second.append(topic.place(tagged(spec, first_z, "Z RESENT AFTER DELETION", timepoint + 4)))
    # A live item deleted.
    second.append(topic.place(deletion(by_item[w][-1], timepoint + 5, late + timedelta(seconds=1))))
    return result


def _key(spec: StreamSpec, event: dict) -> tuple:
    from ch_pipeline.companies_house.streams import item_key_of

    return item_key_of(spec, event)


def normalized(spec: StreamSpec, row: dict) -> dict:
    """A model row in the ground truth's form (dates as ISO text, JSON parsed)."""
    out = {"company_number": row["company_number"], "item_id": row["item_id"], "resource_kind": row["resource_kind"]}
    for column, _ in spec.row_fields:
        value = row[column]
        if value is not None and column in DATE_FIELDS:
            value = value.isoformat()
        elif value is not None and column in JSON_FIELDS:
            value = json.loads(value)
        out[column] = value
    out["published_at"] = row["last_published_at"]
    return out


def expected(spec: StreamSpec, truth: dict) -> dict:
    rows = {}
    for key, row in truth.items():
        row = dict(row)
        row["published_at"] = published_at({"event": {"published_at": row["published_at"]}})
        for column in INT_FIELDS & set(row):
            row[column] = int(row[column]) if row[column] is not None else None
        rows[key] = row
    return rows


def companies_batch(events: list[dict]) -> LandingBatch:
    """The companies stream's events, landed by the real parser (company_house_stream, for the core)."""
    columns = {
        "kafka_partition": [0] * len(events),
        "kafka_offset": list(range(len(events))),
        "kafka_timestamp": [published_at(e) + timedelta(seconds=1) for e in events],
        "kafka_key": [e["resource_id"].encode() for e in events],
        "value": [event_bytes(e) for e in events],
    }
    rows, rejects = parse_raw_messages(pa.Table.from_pydict(columns, schema=RAW_SCHEMA), "companies-0", datetime.now(timezone.utc))
    return LandingBatch("companies-0", [OffsetRange(0, 0, len(events) - 1)], rows, rejects)


def overview_truth(core: dict[str, tuple], truths: dict[str, dict]) -> dict[str, tuple]:
    """company_overview computed in Python from the core's rows and the streams' ground truth."""
    def count(model: str, keep) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in truths[model].values():
            if keep(row):
                counts[row["company_number"]] = counts.get(row["company_number"], 0) + 1
        return counts

    officers = count("officers", lambda r: r["resigned_on"] is None)
    pscs = count("pscs", lambda r: r["ceased_on"] is None)
    charges = count("charges", lambda r: r["status"] in ("outstanding", "part-satisfied"))
    insolvency = {r["company_number"]: r for r in truths["insolvency"].values()}
    filings: dict[str, dict] = {}
    for row in truths["filings"].values():
        held = filings.get(row["company_number"])
        if held is None or (row["date"] or "", row["item_id"]) > (held["date"] or "", held["item_id"]):
            filings[row["company_number"]] = row
    out = {}
    for number, (name, status) in core.items():
        case = insolvency.get(number)
        filing = filings.get(number)
        out[number] = (name, status, officers.get(number, 0), pscs.get(number, 0), charges.get(number, 0),
                       case["status"] if case else None, len(case["case_types"] or []) if case else 0,
                       date.fromisoformat(filing["date"]) if filing and filing["date"] else None, filing["type"] if filing else None)  # fmt: skip
    return out


OVERVIEW_COLUMNS = ("company_number, company_name, company_status, current_officers, active_pscs, outstanding_charges, "
                    "insolvency_status, insolvency_cases, latest_filing_date, latest_filing_type")  # fmt: skip


@dataclass
class Recording:
    histories: dict[str, StreamHistory]
    models: list[dict[str, dict]] = field(default_factory=list)  # per build: model -> {key: row}
    core: dict[str, tuple] = field(default_factory=dict)
    overview: dict[str, tuple] = field(default_factory=dict)


def model_rows(fetch, spec: StreamSpec, model: str) -> dict:
    rows = fetch(f"select * from {model}_current")
    return {(row["company_number"], row["item_id"]): normalized(spec, row) for row in rows}


def record(fetch, land, build, full_refresh: bool = False) -> Recording:
    """Batch 1 landed in two halves five and three days ago, batch 2 now: the incremental build after
    batch 2 re-ranks the items of rows landed since a day before the newest it holds (the second half
    of batch 1 and batch 2), and leaves the items only in the first half as they are."""
    histories = {model: history(spec) for model, spec in specs().items()}
    recording = Recording(histories)
    now = datetime.now(timezone.utc)
    for index in range(2):
        for model, stream_history in histories.items():
            spec, batch = stream_history.spec, stream_history.batches[index]
            if index == 0:
                half = len(batch) // 2
                land(spec, contract_rows(spec, batch[:half], "batch-0a", now - timedelta(days=5)))
                land(spec, contract_rows(spec, batch[half:], "batch-0b", now - timedelta(days=3)))
            else:
                land(spec, contract_rows(spec, batch, "batch-1", now))
        build()
        recording.models.append({model: model_rows(fetch, h.spec, model) for model, h in histories.items()})
    if full_refresh:
        build("--full-refresh")
        recording.models.append({model: model_rows(fetch, h.spec, model) for model, h in histories.items()})
    recording.core = {r["company_number"]: (r["company_name"], r["company_status"]) for r in fetch("select company_number, company_name, company_status from company_house_core")}
    recording.overview = {r["company_number"]: tuple(r.values())[1:] for r in fetch(f"select {OVERVIEW_COLUMNS} from company_overview")}
    return recording


def duckdb_fetch(db: Path):
    def fetch(sql: str) -> list[dict]:
        with duckdb.connect(str(db), read_only=True) as con:
            cursor = con.execute(sql)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]

    return fetch


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    root = tmp_path_factory.mktemp("stream_models")
    with pytest.MonkeyPatch.context() as env:
        db = configure_environment(env, root)
        load_bulk(db, write_sample(root / "bulk.csv", rows=200, seed=11))
        DuckDBWarehouse(db).land(companies_batch(generate_stream_events("companies", COMPANIES, seed=SEED)))
        return record(duckdb_fetch(db), lambda spec, rows: land_duckdb(db, spec, rows), dbt_build, full_refresh=True)


MODELS = list(specs())


@pytest.mark.parametrize("model", MODELS)
def test_each_current_model_equals_the_ground_truth_after_each_build(recording: Recording, model: str):
    """After batch 1 (first build), batch 2 (incremental merge) and a full refresh."""
    stream_history = recording.histories[model]
    for index, through in enumerate([0, 1, 1]):
        truth = expected(stream_history.spec, stream_history.truth(through))
        assert recording.models[index][model] == truth, f"{model}_current differs from the truth after build {index}"


@pytest.mark.parametrize("model", MODELS)
def test_the_hard_cases_resolve_as_companies_house_orders_them(recording: Recording, model: str):
    spec = recording.histories[model].spec
    rows = recording.models[1][model].values()
    tags = {json.dumps(row, default=str) for row in rows}
    text = " ".join(tags)
    assert "X SAME SECOND NEWER" in text and "X SAME SECOND OLDER" not in text
    assert "Y RESENT OLD" not in text and "Z RESENT AFTER DELETION" not in text
    # Some item of batch 1 was deleted in batch 2 and is gone.
    assert set(recording.models[0][model]) - set(recording.models[1][model]), spec.name


def test_the_models_hold_the_deciding_fields_and_one_row_per_key(recording: Recording):
    for model, rows in recording.models[1].items():
        assert len(rows) == len(recording.histories[model].truth(1))


def test_company_overview_equals_a_python_computation(recording: Recording):
    truths = {model: h.truth(1) for model, h in recording.histories.items()}
    assert recording.overview == overview_truth(recording.core, truths)
    assert any(row[2] for row in recording.overview.values()) and any(row[7] for row in recording.overview.values())


def test_the_dbt_catalogue_lists_the_streams_row_fields():
    """macros/streams.sql's fields equal each StreamSpec.row_fields, and sources.yml the contract."""
    macro = (DBT_PROJECT / "macros" / "streams.sql").read_text()
    sources = (DBT_PROJECT / "models" / "streams" / "sources.yml").read_text()
    from ch_pipeline_tests.dbt.stream_landing import landing_columns, landing_table

    for model, spec in specs().items():
        entry = re.search(rf"'{model}': \{{.*?'fields': \[(.*?)\]\}}", macro, re.S)
        assert entry, model
        assert re.findall(r"\('(\w+)', '\w+'\)", entry.group(1)) == [column for column, _ in spec.row_fields]
        table = re.search(rf"- name: {landing_table(spec)}\n.*?columns:\n((?:          - name: \w+\n)+)", sources, re.S)
        assert table, landing_table(spec)
        assert re.findall(r"- name: (\w+)", table.group(1)) == [c.name for c in landing_columns(spec)]
    assert set(STREAMS) - {"companies"} == {spec.name for spec in specs().values()}


def test_the_stream_models_on_the_bigquery_emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bigquery_emulator, bigquery_dataset):
    """The same SQL on BigQuery: both builds of every stream model equal the truth, and the overview."""
    from ch_pipeline.warehouse.bigquery_warehouse import BigQueryWarehouse, load_bigquery
    from ch_pipeline_tests.dbt.conftest import BASELINE_FILE_DATE

    for name, value in bigquery_emulator.env(bigquery_dataset).items():
        monkeypatch.setenv(name, value)
    client = bigquery_emulator.client()
    dataset = f"{bigquery_emulator.project}.{bigquery_dataset}"
    warehouse = BigQueryWarehouse(client, bigquery_emulator.project, bigquery_dataset)
    warehouse.create_stream_tables()
    load_bigquery(client, bigquery_dataset, str(write_sample(tmp_path / "bulk.csv", rows=200, seed=11)), BASELINE_FILE_DATE, progress=lambda _: None)
    warehouse.land(companies_batch(generate_stream_events("companies", COMPANIES, seed=SEED)))

    def fetch(sql: str) -> list[dict]:
        sql = re.sub(r"\bfrom (\w+)", lambda m: f"from `{dataset}.{m.group(1)}`", sql)
        return [dict(row.items()) for row in client.query(sql).result()]

    recording = record(fetch, lambda spec, rows: land_bigquery(client, dataset, spec, rows), dbt_build)
    for model, stream_history in recording.histories.items():
        for index in range(2):
            truth = expected(stream_history.spec, stream_history.truth(index))
            assert recording.models[index][model] == truth, f"{model}_current differs from the truth after batch {index}"
    truths = {model: h.truth(1) for model, h in recording.histories.items()}
    assert recording.overview == overview_truth(recording.core, truths)


def test_a_stream_not_landed_yet_builds_an_empty_model_then_fills_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A new warehouse has no landing table of a stream: its model builds empty (a by-hand `dbt build`
    of the project does not fail), and the first build after a landing takes every event."""
    db = configure_environment(monkeypatch, tmp_path)
    spec = specs()["officers"]
    dbt_build("--select", "officers_current")
    assert duckdb_fetch(db)("select count(*) as n from officers_current") == [{"n": 0}]
    stream_history = history(spec)
    land_duckdb(db, spec, contract_rows(spec, stream_history.batches[0], "batch-0", datetime.now(timezone.utc)))
    dbt_build("--select", "officers_current")
    assert model_rows(duckdb_fetch(db), spec, "officers") == expected(spec, stream_history.truth(0))


def test_dagster_builds_one_stream_model_with_its_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """ch_dbt_stream_models is subsettable: a request for officers_current builds it and its tests
    (asset checks), nothing of the companies models nor of the other streams."""
    import dagster as dg

    from ch_pipeline.defs.dbt import ch_dbt_stream_models, dbt_resource

    db = configure_environment(monkeypatch, tmp_path)
    spec = specs()["officers"]
    stream_history = history(spec)
    land_duckdb(db, spec, contract_rows(spec, stream_history.batches[0], "batch-0", datetime.now(timezone.utc)))
    with dg.instance_for_test() as instance:
        result = dg.materialize([ch_dbt_stream_models], selection=["officers_current"], resources={"dbt": dbt_resource()}, instance=instance)
    assert result.success
    assert {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()} == {"officers_current"}
    checks = result.get_asset_check_evaluations()
    assert {c.check_name for c in checks} == {"unique_officers_current_item_key", "not_null_officers_current_item_key",
                                              "not_null_officers_current_item_id", "not_null_officers_current_company_number"}
    assert all(c.passed for c in checks)
    assert model_rows(duckdb_fetch(db), spec, "officers") == expected(spec, stream_history.truth(0))
