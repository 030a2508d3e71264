"""Realistic ``data`` for the items of every stream but ``/companies`` (which has its own generator in
``events.py``): how an item is created and how a later event changes it.

One ``ItemFactory`` per stream: ``new(company)`` -> (resource kind, resource_uri, data) and
``update(data)`` -> (data, fields_changed). Field names and value sets follow the REST resources the
streams carry (see the sources in ``streams.py``); shapes are trimmed to what users query plus enough
of the rest (addresses, links, etags) that downstream code meets the real nesting.
"""

from __future__ import annotations

import base64
import copy
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta

_FORENAMES = ["Oliver", "Amelia", "Siân", "Zoë", "Seán", "Mohammed", "Priya", "Łukasz", "Chloé", "Dafydd", "Aoife", "Björn"]
_SURNAMES = ["SMITH", "JONES", "O'NEILL", "MÜLLER", "PATEL", "WILLIAMS", "NGUYEN", "D'ARCY", "KOWALSKI", "MACDONALD", "ØSTERGAARD"]
_TITLES = ["Mr", "Mrs", "Ms", "Dr", "Miss"]
_TOWNS = ["London", "Manchester", "Birmingham", "Edinburgh", "Glasgow", "Belfast", "Cardiff", "Leeds", "Aberdeen"]
_NATIONALITIES = ["British", "Irish", "Polish", "Indian", "French", "German", "Welsh", "Scottish"]
_OFFICER_ROLES = ["director"] * 6 + ["secretary", "llp-member", "llp-designated-member", "corporate-director", "nominee-director"]
_OCCUPATIONS = ["Company Director", "Accountant", "Engineer", "Solicitor", "Retired", "None"]
_NATURES = [
    "ownership-of-shares-25-to-50-percent", "ownership-of-shares-50-to-75-percent", "ownership-of-shares-75-to-100-percent",
    "voting-rights-25-to-50-percent", "voting-rights-75-to-100-percent", "right-to-appoint-and-remove-directors",
    "significant-influence-or-control",
]  # fmt: skip
# resource_kind -> (the URI segment of the REST path, data.kind)
PSC_KINDS = {
    "company-psc-individual": ("individual", "individual-person-with-significant-control"),
    "company-psc-corporate": ("corporate-entity", "corporate-entity-person-with-significant-control"),
    "company-psc-legal": ("legal-person", "legal-person-person-with-significant-control"),
    "company-psc-supersecure": ("super-secure", "super-secure-person-with-significant-control"),
    "individual-beneficial-owner": ("individual-beneficial-owner", "individual-beneficial-owner"),
    "corporate-entity-beneficial-owner": ("corporate-entity-beneficial-owner", "corporate-entity-beneficial-owner"),
    "legal-person-beneficial-owner": ("legal-person-beneficial-owner", "legal-person-beneficial-owner"),
    "super-secure-beneficial-owner": ("super-secure-beneficial-owner", "super-secure-beneficial-owner"),
}
# Shares as on the real stream: mostly individuals; beneficial owners only under overseas entities (OE).
_PSC_WEIGHTS = [60, 20, 3, 2, 8, 4, 2, 1]
_FILINGS = [  # (category, type, description)
    ("accounts", "AA", "accounts-with-accounts-type-micro-entity"), ("accounts", "AA", "accounts-with-accounts-type-dormant"),
    ("confirmation-statement", "CS01", "confirmation-statement-with-no-updates"),
    ("officers", "AP01", "appointment-director-company-with-name-date"), ("officers", "TM01", "termination-director-company-with-name-termination-date"),
    ("address", "AD01", "change-registered-office-address-company-with-date-old-address-new-address"),
    ("incorporation", "NEWINC", "incorporation-company"), ("mortgage", "MR01", "mortgage-create-with-deed-with-charge-number-charge-creation-date"),
    ("persons-with-significant-control", "PSC01", "notification-of-a-person-with-significant-control"),
    ("liquidation", "LIQ02", "liquidation-voluntary-statement-of-affairs"), ("capital", "SH01", "capital-allotment-shares"),
]  # fmt: skip
_CASE_DATES = {  # insolvency case type -> its date types, in order
    "creditors-voluntary-liquidation": ["wound-up-on", "concluded-winding-up-on", "dissolved-on"],
    "members-voluntary-liquidation": ["declaration-solvent-on", "wound-up-on", "due-to-be-dissolved-on"],
    "compulsory-liquidation": ["petitioned-on", "ordered-to-wind-up-on", "concluded-winding-up-on"],
    "in-administration": ["administration-started-on", "administration-ended-on"],
    "corporate-voluntary-arrangement": ["voluntary-arrangement-started-on", "voluntary-arrangement-ended-on"],
    "receivership": ["instrumented-on", "case-end-on"],
    "moratorium": ["moratorium-started-on", "moratorium-ended-on"],
}
_EXEMPTIONS = [
    "disclosure_transparency_rules_chapter_five_applies", "psc_exempt_as_trading_on_regulated_market",
    "psc_exempt_as_shares_admitted_on_market", "psc_exempt_as_trading_on_uk_regulated_market",
]  # fmt: skip
# CH's own spelling ("signficant") is kept: it is the value the API sends.
_STATEMENTS = [
    "no-individual-or-entity-with-signficant-control", "psc-exists-but-not-identified", "psc-details-not-confirmed",
    "steps-to-find-psc-not-yet-completed", "psc-has-failed-to-confirm-changed-details",
]  # fmt: skip
_LAST_DAY = date(2026, 1, 4)  # the day before the first generated published_at (events._FIRST_PUBLISHED_AT)
_LENDERS = ["HSBC UK BANK PLC", "BARCLAYS BANK UK PLC", "LLOYDS BANK PLC", "NATIONAL WESTMINSTER BANK PLC", "FUNDING CIRCLE LTD"]
_COURTS = ["Birmingham County Court", "High Court of Justice", "Insolvency Service", "Court of Session"]


@dataclass
class ItemFactory:
    """Items of one stream. ``new`` returns (resource_kind, resource_uri, data); ``update`` a changed
    copy of ``data`` and the dotted names of the fields that changed (``fields_changed``)."""

    rng: random.Random
    new: Callable[["ItemFactory", str], tuple[str, str, dict]]
    update: Callable[["ItemFactory", dict], tuple[dict, list[str]]]
    charge_numbers: dict[str, int] = field(default_factory=dict)

    def item_id(self, size: int = 20) -> str:
        """An opaque id like Companies House's (``6pa-Y4neUHkESSGTC20iBKDXg9I``): URL-safe base64."""
        return base64.urlsafe_b64encode(self.rng.randbytes(size)).decode().rstrip("=")

    def day(self, start: date, span_days: int) -> str:
        """A date from ``start`` within ``span_days``, never after the generated history begins."""
        return min(start + timedelta(days=self.rng.randrange(span_days)), _LAST_DAY).isoformat()

    def person(self) -> dict:
        forename, surname = self.rng.choice(_FORENAMES), self.rng.choice(_SURNAMES)
        return {"forename": forename, "surname": surname, "title": self.rng.choice(_TITLES)}

    def address(self) -> dict:
        return {"premises": str(self.rng.randrange(1, 300)), "address_line_1": self.rng.choice(["High Street", "Station Road", "Quay Street"]),
                "locality": self.rng.choice(_TOWNS), "postal_code": f"{self.rng.choice(['EC1A', 'M1', 'EH1', 'BT1', 'CF10'])} {self.rng.randrange(10)}AB"}  # fmt: skip

    def etag(self) -> str:
        return "%040x" % self.rng.getrandbits(160)


def _changed(data: dict, factory: ItemFactory, changes: dict) -> tuple[dict, list[str]]:
    updated = copy.deepcopy(data)
    for name, value in changes.items():
        if value is None:
            updated.pop(name, None)
        else:
            updated[name] = value
    updated["etag"] = factory.etag()
    return updated, list(changes)


def _new_officer(f: ItemFactory, company: str) -> tuple[str, str, dict]:
    uri = f"/company/{company}/appointments/{f.item_id()}"
    p = f.person()
    data = {"address": f.address(), "appointed_on": f.day(date(1995, 1, 1), 11_000), "country_of_residence": "England",
            "date_of_birth": {"month": f.rng.randrange(1, 13), "year": f.rng.randrange(1940, 2005)}, "etag": f.etag(),
            "links": {"self": uri}, "name": f"{p['surname']}, {p['forename']}", "nationality": f.rng.choice(_NATIONALITIES),
            "occupation": f.rng.choice(_OCCUPATIONS), "officer_role": f.rng.choice(_OFFICER_ROLES)}  # fmt: skip
    return "company-officers", uri, data


def _update_officer(f: ItemFactory, data: dict) -> tuple[dict, list[str]]:
    if "resigned_on" not in data and f.rng.random() < 0.5:
        return _changed(data, f, {"resigned_on": f.day(date.fromisoformat(data["appointed_on"]), 3000)})
    return _changed(data, f, {"address": f.address()})


def _new_psc(f: ItemFactory, company: str) -> tuple[str, str, dict]:
    kind = f.rng.choices(list(PSC_KINDS), weights=_PSC_WEIGHTS)[0]
    if kind.endswith("beneficial-owner"):
        company = f"OE{f.rng.randrange(10**6):06d}"  # overseas entities: the register of beneficial owners
    segment, data_kind = PSC_KINDS[kind]
    uri = f"/company/{company}/persons-with-significant-control/{segment}/{f.item_id()}"
    data = {"etag": f.etag(), "kind": data_kind, "links": {"self": uri}, "notified_on": f.day(date(2016, 4, 6), 3500)}
    if "super-secure" in kind:
        data["description"] = "super-secure-persons-with-significant-control"  # no name, no address: protected
        return kind, uri, data
    data["address"] = f.address()
    data["natures_of_control"] = sorted(f.rng.sample(_NATURES, f.rng.choice([1, 1, 2, 3])))
    if "individual" in kind:
        p = f.person()
        data.update(name=f"{p['title']} {p['forename']} {p['surname'].title()}", name_elements=p,
                    nationality=f.rng.choice(_NATIONALITIES), date_of_birth={"month": f.rng.randrange(1, 13), "year": f.rng.randrange(1940, 2005)})  # fmt: skip
    else:
        data["name"] = f"{f.rng.choice(_SURNAMES)} HOLDINGS {f.rng.choice(['LIMITED', 'LTD', 'S.A.', 'GMBH'])}"
        data["identification"] = {"legal_authority": "Companies Act 2006", "legal_form": "Private Limited Company"}
    return kind, uri, data


def _update_psc(f: ItemFactory, data: dict) -> tuple[dict, list[str]]:
    if "ceased_on" not in data and f.rng.random() < 0.5:
        return _changed(data, f, {"ceased_on": f.day(date.fromisoformat(data["notified_on"]), 2000), "ceased": True})
    if "natures_of_control" in data:
        return _changed(data, f, {"natures_of_control": sorted(f.rng.sample(_NATURES, 2))})
    return _changed(data, f, {"notified_on": f.day(date(2016, 4, 6), 3500)})


def _new_charge(f: ItemFactory, company: str) -> tuple[str, str, dict]:
    number = f.charge_numbers[company] = f.charge_numbers.get(company, 0) + 1
    uri = f"/company/{company}/charges/{f.item_id()}"
    created = f.day(date(2005, 1, 1), 7500)
    data = {"charge_code": f"{company}{number:04d}", "charge_number": number, "created_on": created, "delivered_on": created,
            "classification": {"type": "charge-description", "description": "A registered charge"}, "etag": f.etag(),
            "links": {"self": uri}, "particulars": {"contains_negative_pledge": True, "contains_floating_charge": f.rng.random() < 0.6},
            "persons_entitled": [{"name": f.rng.choice(_LENDERS)}], "status": "outstanding",
            "transactions": [{"delivered_on": created, "filing_type": "create-charge-with-deed"}]}  # fmt: skip
    return "company-charges", uri, data


def _update_charge(f: ItemFactory, data: dict) -> tuple[dict, list[str]]:
    if data["status"] == "outstanding":
        status = f.rng.choice(["fully-satisfied", "fully-satisfied", "part-satisfied"])
        return _changed(data, f, {"status": status, "satisfied_on": f.day(date.fromisoformat(data["created_on"]), 4000)})
    return _changed(data, f, {"persons_entitled": [{"name": f.rng.choice(_LENDERS)}]})


def _new_filing(f: ItemFactory, company: str) -> tuple[str, str, dict]:
    # Real ids are base64 of digits then letters ("MzM5ODkyOTYzNmFkaXF6a2N4" is "3398929636adiqzkcx");
    # URL-safe, since the id is a path segment of resource_uri.
    plain = "".join(f.rng.choice("0123456789") for _ in range(10)) + "".join(f.rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(8))
    transaction_id = base64.urlsafe_b64encode(plain.encode()).decode()
    uri = f"/company/{company}/filing-history/{transaction_id}"
    category, kind, description = f.rng.choice(_FILINGS)
    data = {"barcode": f"X{f.rng.getrandbits(28):07X}", "category": category, "date": f.day(date(2025, 1, 1), 400),
            "description": description, "links": {"self": uri}, "pages": f.rng.randrange(1, 40),
            "transaction_id": transaction_id, "type": kind}  # fmt: skip
    return "filing-history", uri, data


def _update_filing(f: ItemFactory, data: dict) -> tuple[dict, list[str]]:
    # The usual later event: the document's metadata link arrives once it is scanned.
    updated = copy.deepcopy(data)
    updated["links"]["document_metadata"] = f"https://document-api.company-information.service.gov.uk/document/{f.item_id(32)}"
    return updated, ["links.document_metadata"]


# Case types that give the record a ``status`` (companyInsolvency.status); liquidations give none.
_STATUS_OF_CASE = {"in-administration": "in-administration", "receivership": "receivership",
                   "corporate-voluntary-arrangement": "voluntary-arrangement"}  # fmt: skip


def _new_insolvency(f: ItemFactory, company: str) -> tuple[str, str, dict]:
    return "company-insolvency", f"/company/{company}/insolvency", _with_status({"cases": [_case(f, 1)], "etag": f.etag()})


def _with_status(data: dict) -> dict:
    data.pop("status", None)
    if status := _STATUS_OF_CASE.get(data["cases"][-1]["type"]):
        data["status"] = status
    return data


def _case(f: ItemFactory, number: int) -> dict:
    case_type = f.rng.choice(list(_CASE_DATES))
    return {"type": case_type, "number": str(number), "dates": [{"type": _CASE_DATES[case_type][0], "date": f.day(date(2020, 1, 1), 2000)}],
            "practitioners": [{"name": f"{f.rng.choice(_FORENAMES)} {f.rng.choice(_SURNAMES).title()}", "role": "practitioner", "address": f.address()}]}  # fmt: skip


def _update_insolvency(f: ItemFactory, data: dict) -> tuple[dict, list[str]]:
    updated = copy.deepcopy(data)
    case = updated["cases"][-1]
    later = _CASE_DATES[case["type"]][len(case["dates"]) :]
    if later and f.rng.random() < 0.7:  # the case moves on: its next date
        case["dates"].append({"type": later[0], "date": f.day(date.fromisoformat(case["dates"][-1]["date"]), 700)})
    else:
        updated["cases"].append(_case(f, len(updated["cases"]) + 1))
    updated["etag"] = f.etag()
    return _with_status(updated), ["cases"]


def _new_disqualified(f: ItemFactory, company: str) -> tuple[str, str, dict]:
    natural = f.rng.random() < 0.9
    uri = f"/disqualified-officers/{'natural' if natural else 'corporate'}/{f.item_id()}"
    start = date.fromisoformat(f.day(date(2015, 1, 1), 3500))
    disqualification = {"case_identifier": f"INV{f.rng.randrange(10**6, 10**7)}", "address": f.address(), "company_names": [f"{f.rng.choice(_SURNAMES)} TRADING LIMITED"],
                        "court_name": f.rng.choice(_COURTS), "disqualification_type": f.rng.choice(["court-order", "undertaking"]),
                        "disqualified_from": start.isoformat(), "disqualified_until": (start + timedelta(days=365 * f.rng.randrange(2, 15))).isoformat(),
                        "reason": {"act": "company-directors-disqualification-act-1986", "section": "6"}}  # fmt: skip
    data = {"disqualifications": [disqualification], "etag": f.etag(), "links": {"self": uri}}
    if natural:
        p = f.person()
        data.update(kind="natural-disqualification", forename=p["forename"], surname=p["surname"], title=p["title"],
                    date_of_birth=f.day(date(1950, 1, 1), 18000), nationality=f.rng.choice(_NATIONALITIES))  # fmt: skip
        return "disqualified-officer-natural", uri, data
    data.update(kind="corporate-disqualification", name=f"{f.rng.choice(_SURNAMES)} VENTURES LIMITED", company_number=company)
    return "disqualified-officer-corporate", uri, data


def _update_disqualified(f: ItemFactory, data: dict) -> tuple[dict, list[str]]:
    updated = copy.deepcopy(data)
    updated["permissions_to_act"] = [{"company_names": [f"{f.rng.choice(_SURNAMES)} LIMITED"], "court_name": f.rng.choice(_COURTS),
                                      "granted_on": f.day(date(2020, 1, 1), 1500)}]  # fmt: skip
    updated["etag"] = f.etag()
    return updated, ["permissions_to_act"]


def _new_exemptions(f: ItemFactory, company: str) -> tuple[str, str, dict]:
    name = f.rng.choice(_EXEMPTIONS)
    exemptions = {name: {"exemption_type": name.replace("_", "-"), "items": [{"exempt_from": f.day(date(2016, 6, 30), 3000)}]}}
    # No leading slash: the real stream sends "company/<number>/exemptions" (streams.py sources).
    return "company-exemptions", f"company/{company}/exemptions", {"etag": f.etag(), "exemptions": exemptions, "kind": "exemptions",
                                                                   "links": {"self": f"/company/{company}/exemptions"}}  # fmt: skip


def _update_exemptions(f: ItemFactory, data: dict) -> tuple[dict, list[str]]:
    updated = copy.deepcopy(data)
    exemption = next(iter(updated["exemptions"].values()))
    exemption["items"][-1].setdefault("exempt_to", f.day(date.fromisoformat(exemption["items"][-1]["exempt_from"]), 2000))
    updated["etag"] = f.etag()
    return updated, ["exemptions"]


def _new_statement(f: ItemFactory, company: str) -> tuple[str, str, dict]:
    uri = f"/company/{company}/persons-with-significant-control-statements/{f.item_id()}"
    data = {"etag": f.etag(), "kind": "persons-with-significant-control-statement", "links": {"self": uri},
            "notified_on": f.day(date(2016, 4, 6), 3500), "statement": f.rng.choice(_STATEMENTS)}  # fmt: skip
    return "company-psc-statements", uri, data


def _update_statement(f: ItemFactory, data: dict) -> tuple[dict, list[str]]:
    if "ceased_on" not in data:
        return _changed(data, f, {"ceased_on": f.day(date.fromisoformat(data["notified_on"]), 1500)})
    return _changed(data, f, {"statement": f.rng.choice(_STATEMENTS)})


ITEM_FACTORIES = {  # stream name -> (new, update)
    "officers": (_new_officer, _update_officer),
    "persons-with-significant-control": (_new_psc, _update_psc),
    "charges": (_new_charge, _update_charge),
    "filings": (_new_filing, _update_filing),
    "insolvency-cases": (_new_insolvency, _update_insolvency),
    "disqualified-officers": (_new_disqualified, _update_disqualified),
    "company-exemptions": (_new_exemptions, _update_exemptions),
    "persons-with-significant-control-statements": (_new_statement, _update_statement),
}


def item_factory(stream_name: str, rng: random.Random) -> ItemFactory:
    new, update = ITEM_FACTORIES[stream_name]
    return ItemFactory(rng, new, update)
