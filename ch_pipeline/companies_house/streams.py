"""The catalogue of Companies House streams: one ``StreamSpec`` per endpoint, the one place that says
what each stream serves, where it goes in Kafka, and how Companies House keys its items.

Every later layer (replay server, producer, landing, dbt, checks) reads its per-stream facts from
here, so adding a stream is a catalogue entry, not a copy of the companies code.

Sources checked (2026-12, via the public reference search):

- Endpoints and status codes: developer-specs.company-information.service.gov.uk/streaming-api/reference
  (e.g. ``GET https://stream.companieshouse.gov.uk/officers``: 200 one resource per line, 401, 416
  "timepoint invalid or too old", 429 "rate-limited"); the envelope (``resource_kind``,
  ``resource_uri``, ``resource_id``, ``data``, ``event{timepoint, published_at, type,
  fields_changed}``) is "standard across all the stream API endpoints" (streaming-api/guides/overview).
- Stream paths as followed in production by mrbrianevans/companies-house-stream
  (``server/src/streams/streamPaths.ts``, ``client-pure/src/scripts/streamPaths.ts``).
- Real envelopes: officers ``/company/08314130/appointments/6pa-Y4ne...`` with ``resource_id`` the
  appointment id (forum.aws.chdev.org/t/appointments-id-rarely-included-in-officersstream-resource/6622);
  filings ``/company/10620794/filing-history/MzM5...`` with ``resource_id`` = ``data.transaction_id``,
  and exemptions ``company/14438833/exemptions`` (no leading slash!) with ``resource_id`` the company
  number (mrbrianevans/companies-house-stream ``server/src/api/companyNumber.test.ts``); charges
  ``/company/SC123456/charges/<charge id>``; insolvency keyed by company (``resource_id`` is the
  company number, ``saveCompanyNumber.ts``).
- Field names of ``data``: the same resources as the REST API (officer appointment, PSC kinds,
  charge, filing-history item, companyInsolvency with its case types and date types, disqualification,
  exemptions, PSC statement), and mrbrianevans ``server/src/types/eventTypes.ts``.
- PSC resource kinds, including beneficial owners of overseas entities: Companies House's own
  psc-data-api ``PscTransformationHelper.mapResourceKind`` tests (``company-psc-supersecure``, not
  ``super-secure``) and mrbrianevans' ``pscKinds``.
- Disqualified officers live at ``/disqualified-officers/natural|corporate/<officer id>``: they are
  not under a company, so their Kafka key is the officer id (the REST API's path).
"""

from __future__ import annotations

from dataclasses import dataclass

COMPANIES = "companies"


@dataclass(frozen=True)
class StreamSpec:
    """One Companies House stream.

    ``item``: what one item is, as Companies House keys it (the last ``resource_uri`` segment is the
    item id, equal to ``resource_id``); ``per_company``: at most one item per company, whose id is the
    company number. ``row_fields``: the ``data`` fields users query, as (column, dotted path into
    ``data``): the typed columns of the ground truth now and of the landing table later.
    """

    name: str  # CLI and config name, e.g. ``--stream officers``
    path: str  # the endpoint, e.g. ``/officers``
    resource_kinds: tuple[str, ...]
    default_topic: str
    item: str
    per_company: bool = False
    under_company: bool = True  # False: items are not under /company/<number> (disqualified officers)
    row_fields: tuple[tuple[str, str], ...] = ()

    @property
    def env_suffix(self) -> str:
        """``persons-with-significant-control`` -> ``PERSONS_WITH_SIGNIFICANT_CONTROL`` (env names)."""
        return self.name.upper().replace("-", "_")

    # The warehouse tables, named after the catalogue topic (a contract with the dbt models: the
    # topic name in Kafka may be configured differently, the table names never change).
    @property
    def landing_table(self) -> str:
        return f"{self.default_topic}_stream"

    @property
    def rejects_table(self) -> str:
        return f"{self.default_topic}_stream_rejects"

    # The Dagster names of the stream's landing job and of the sensor that launches it. The Dagster
    # instance keys the sensor's stored cursor by its name and finds a stream's landing runs by their
    # job name (``local_restore``), so these never change either.
    @property
    def landing_job(self) -> str:
        return f"{self.landing_table}_job"

    @property
    def kafka_sensor(self) -> str:
        return f"{self.default_topic}_kafka_sensor"

    @property
    def current_model(self) -> str | None:
        """The dbt current-state model of the stream (``ch_dbt/models/streams``); companies has the core."""
        return None if self.name == COMPANIES else f"{self.default_topic.removeprefix('company_house_')}_current"


STREAMS: dict[str, StreamSpec] = {
    spec.name: spec
    for spec in (
        StreamSpec(
            COMPANIES, "/companies", ("company-profile",), "company_house", "company, by company number", per_company=True,
            row_fields=(("company_name", "company_name"), ("company_status", "company_status"),
                        ("date_of_creation", "date_of_creation"), ("postal_code", "registered_office_address.postal_code")),
        ),
        StreamSpec(
            "filings", "/filings", ("filing-history",), "company_house_filings", "filing, by transaction id",
            row_fields=(("transaction_id", "transaction_id"), ("category", "category"), ("type", "type"),
                        ("date", "date"), ("description", "description")),
        ),
        StreamSpec(
            "officers", "/officers", ("company-officers",), "company_house_officers", "appointment, by appointment id",
            row_fields=(("name", "name"), ("officer_role", "officer_role"), ("appointed_on", "appointed_on"),
                        ("resigned_on", "resigned_on")),
        ),
        StreamSpec(
            "persons-with-significant-control", "/persons-with-significant-control",
            ("company-psc-individual", "company-psc-corporate", "company-psc-legal", "company-psc-supersecure",
             "individual-beneficial-owner", "corporate-entity-beneficial-owner", "legal-person-beneficial-owner",
             "super-secure-beneficial-owner"),
            "company_house_pscs", "person with significant control, by PSC id under the company",
            row_fields=(("name", "name"), ("kind", "kind"), ("natures_of_control", "natures_of_control"),
                        ("notified_on", "notified_on"), ("ceased_on", "ceased_on")),
        ),
        StreamSpec(
            "charges", "/charges", ("company-charges",), "company_house_charges", "charge, by charge id",
            row_fields=(("charge_number", "charge_number"), ("status", "status"), ("created_on", "created_on"),
                        ("satisfied_on", "satisfied_on")),
        ),
        StreamSpec(
            "insolvency-cases", "/insolvency-cases", ("company-insolvency",), "company_house_insolvency",
            "insolvency record of a company (its cases inside), by company number", per_company=True,
            row_fields=(("status", "status"), ("case_types", "cases[].type"), ("case_dates", "cases[].dates")),
        ),
        StreamSpec(
            "disqualified-officers", "/disqualified-officers",
            ("disqualified-officer-natural", "disqualified-officer-corporate"), "company_house_disqualified_officers",
            "disqualified officer, by officer id (not under a company)", under_company=False,
            # Natural persons have forename/surname, corporate officers a name.
            row_fields=(("name", "name"), ("forename", "forename"), ("surname", "surname"), ("kind", "kind"),
                        ("disqualified_from", "disqualifications[0].disqualified_from"),
                        ("disqualified_until", "disqualifications[0].disqualified_until")),
        ),
        StreamSpec(
            "company-exemptions", "/company-exemptions", ("company-exemptions",), "company_house_exemptions",
            "exemptions of a company, by company number", per_company=True,
            row_fields=(("exemption_types", "exemptions.*.exemption_type"),),
        ),
        StreamSpec(
            "persons-with-significant-control-statements", "/persons-with-significant-control-statements",
            ("company-psc-statements",), "company_house_psc_statements", "PSC statement, by statement id under the company",
            row_fields=(("statement", "statement"), ("notified_on", "notified_on"), ("ceased_on", "ceased_on")),
        ),
    )
}  # fmt: skip
STREAM_NAMES = tuple(STREAMS)
_BY_PATH = {spec.path: spec for spec in STREAMS.values()}


def stream(name: str) -> StreamSpec:
    try:
        return STREAMS[name]
    except KeyError:
        raise ValueError(f"unknown Companies House stream {name!r}: one of {', '.join(STREAM_NAMES)}") from None


def stream_for_path(path: str) -> StreamSpec | None:
    return _BY_PATH.get(path)


def uri_segments(event: dict) -> list[str]:
    """``resource_uri`` split on ``/``; tolerant of the missing leading slash the exemptions stream sends."""
    return [part for part in (event.get("resource_uri") or "").split("/") if part]


def item_key_of(spec: StreamSpec, event: dict) -> tuple[str | None, str]:
    """(company number, item id) as Companies House keys the item: read from ``resource_uri``, so a
    ``deleted`` event (no ``data``) keys the same item as its ``changed`` events. For one-per-company
    streams the item id is the company number; disqualified officers have no company (``None``)."""
    parts = uri_segments(event)
    company = parts[1] if spec.under_company and len(parts) >= 2 and parts[0] == "company" else None
    if spec.per_company:
        company = company or event.get("resource_id")
        return company, company
    item_id = parts[-1] if parts else event.get("resource_id")
    return company, item_id


def kafka_key_of(spec: StreamSpec, event: dict) -> str | None:
    """The Kafka message key: the company number (all of one company's events in one partition, in
    order); for disqualified officers, who are not under a company, the officer id."""
    company, item_id = item_key_of(spec, event)
    if spec.name == COMPANIES:
        # data.company_number first, as the companies producer always did (ch_pipeline.companies_house.events).
        return (event.get("data") or {}).get("company_number") or company
    return company if spec.under_company else item_id


def field_at(data: dict, path: str):
    """The value at a dotted ``path`` in ``data``: ``a.b``; ``list[0].x`` (one element); ``list[].x``
    (every element); ``map.*.x`` (every value). ``None`` when missing."""
    values = [data]
    for step in path.split("."):
        spread = step.endswith("[]") or step == "*"
        index = int(step[step.index("[") + 1 : -1]) if step.endswith("]") and not step.endswith("[]") else None
        name = step.split("[", 1)[0]
        found = []
        for value in values:
            if step == "*":
                found.extend(value.values() if isinstance(value, dict) else [])
                continue
            inner = value.get(name) if isinstance(value, dict) else None
            if spread:
                found.extend(inner if isinstance(inner, list) else [])
            elif index is not None:
                found.extend(inner[index : index + 1] if isinstance(inner, list) else [])
            elif inner is not None:
                found.append(inner)
        values = found
        if not spread and step != "*" and not values:
            return None
    many = any(step.endswith("[]") or step == "*" for step in path.split("."))
    return values if many else (values[0] if values else None)
