"""The Companies House bulk snapshot, BasicCompanyDataAsOneFile (docs/architecture.md §3), and a realistic sample.

Format facts (the published monthly file, ~5.5M rows, ~2.7 GB unzipped, shipped as a .zip):
every field is quoted, lines end in CRLF, dates are ``DD/MM/YYYY``, several header names carry a
leading space (``" CompanyNumber"``), statuses are title case (``"Active"``) where the streaming API
uses its lower-case enumeration (``"active"``).
"""

from __future__ import annotations

import csv
import random
import re
import zipfile
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

# The header line exactly as published, leading spaces included.
HEADER: list[str] = [
    "CompanyName", " CompanyNumber", "RegAddress.CareOf", "RegAddress.POBox", "RegAddress.AddressLine1",
    " RegAddress.AddressLine2", "RegAddress.PostTown", "RegAddress.County", "RegAddress.Country",
    "RegAddress.PostCode", "CompanyCategory", "CompanyStatus", "CountryOfOrigin", "DissolutionDate",
    "IncorporationDate", "Accounts.AccountRefDay", "Accounts.AccountRefMonth", "Accounts.NextDueDate",
    "Accounts.LastMadeUpDate", "Accounts.AccountCategory", "Returns.NextDueDate", "Returns.LastMadeUpDate",
    "Mortgages.NumMortCharges", "Mortgages.NumMortOutstanding", "Mortgages.NumMortPartSatisfied",
    "Mortgages.NumMortSatisfied", "SICCode.SicText_1", "SICCode.SicText_2", "SICCode.SicText_3",
    "SICCode.SicText_4", "LimitedPartnerships.NumGenPartners", "LimitedPartnerships.NumLimPartners", "URI",
    *[name for i in range(1, 11) for name in (f"PreviousName_{i}.CONDATE", f" PreviousName_{i}.CompanyName")],
    "ConfStmtNextDueDate", " ConfStmtLastMadeUpDate",
]

DATE_FORMAT = "%d/%m/%Y"

# The monthly file as published, named by its date: the register as at 00:00 UTC that day. Only the
# newest is online; `{file_date}` in a source (CH_BULK_CSV, run config) stands for a month's date.
FILE_DATE_PLACEHOLDER = "{file_date}"
PUBLISHED_URL = f"https://download.companieshouse.gov.uk/BasicCompanyDataAsOneFile-{FILE_DATE_PLACEHOLDER}.zip"
_DATED_NAME = re.compile(r"BasicCompanyDataAsOneFile-(\d{4}-\d{2}-\d{2})")

# The generated sample stands for the file of 2026-01-01: the register just before the history the
# replay server generates (events.py, from 2026-01-05), so the stream's events are all newer than it.
SAMPLE_FILE_DATE = date(2026, 1, 1)


def published_name(file_date: date, suffix: str = ".zip") -> str:
    return f"BasicCompanyDataAsOneFile-{file_date.isoformat()}{suffix}"


def file_date_in_name(source: str) -> date | None:
    """The date in a published file's name (path or URL), e.g. ...-2026-11-01.zip; None when undated."""
    found = _DATED_NAME.search(source.rsplit("/", 1)[-1])
    return date.fromisoformat(found.group(1)) if found else None

# Our column -> the bulk column it comes from (header name without its stray spaces).
BULK_SOURCE_COLUMNS = {
    "company_name": "CompanyName",
    "company_number": "CompanyNumber",
    "company_status": "CompanyStatus",
    "date_of_creation": "IncorporationDate",
    "postal_code": "RegAddress.PostCode",
}

# Bulk status (lower-cased) -> the streaming API's `company_status` enumeration, so bulk and
# stream rows of one company compare equal. The detail ("proposal to strike off") is
# `company_status_detail` in the API, not part of the status. Unlisted values fall back to a slug.
BULK_STATUS_TO_STREAM = {
    "active": "active",
    "active - proposal to strike off": "active",
    "dissolved": "dissolved",
    "liquidation": "liquidation",
    "in administration": "administration",
    "administration order": "administration",
    "in administration/administrative receiver": "administration",
    "in administration/receiver manager": "administration",
    "administrative receiver": "receivership",
    "receivership": "receivership",
    "receiver action": "receivership",
    "receiver manager / administrative receiver": "receivership",
    "live but receiver manager on at least one charge": "receivership",
    "voluntary arrangement": "voluntary-arrangement",
    "voluntary arrangement / administrative receiver": "voluntary-arrangement",
    "voluntary arrangement / receiver manager": "voluntary-arrangement",
    "converted/closed": "converted-closed",
    "insolvency proceedings": "insolvency-proceedings",
    "open": "open",
    "closed": "closed",
    "registered": "registered",
    "removed": "removed",
}

def gap_remedy() -> str:
    """How missed events reach the core: the first monthly bulk file dated after the restart (a
    company's row in it wins over every older event, ch_dbt/macros/bulk_file.sql)."""
    return (
        "The core takes the missed changes from the first monthly bulk file dated after the restart: the "
        "company_house_bulk_monthly schedule loads each month's file (CH_BULK_CSV with {file_date}); by hand, once "
        "it is published: `dagster asset materialize -m ch_pipeline.definitions --select company_house_bulk "
        "--partition YYYY-MM-01` (the file's date)."
    )


def column_name(header_name: str) -> str:
    """A SQL-safe name for a header column (``" RegAddress.PostCode"`` -> ``RegAddress_PostCode``)."""
    return header_name.strip().replace(".", "_")


class BulkFormatError(ValueError):
    """The file is not BasicCompanyDataAsOneFile as published."""


def header_names(first_line: str) -> list[str]:
    """The column names of a header line, read as CSV (names quoted or not, a comma inside quotes),
    without a byte order mark, stray spaces or leftover quotes (``" CompanyNumber"`` -> ``CompanyNumber``)."""
    line = first_line.lstrip("\ufeff").rstrip("\r\n")
    names = next(csv.reader([line], skipinitialspace=True), [])
    return [name.strip().strip('"').strip() for name in names]


def check_header(first_line: str) -> list[str]:
    """The SQL names of the file's columns, in file order, matched by name (not position): each
    column the loader reads (``BULK_SOURCE_COLUMNS``) is named ``column_name(...)`` wherever it
    stands, every other column ``unused_<position>``. A quoted header, reordered or extra columns
    are fine (a file re-saved by a spreadsheet or a CSV tool); a needed column missing or named
    twice (letter case aside) fails with its name."""
    names = header_names(first_line)
    needed = {source.casefold(): source for source in BULK_SOURCE_COLUMNS.values()}
    found: dict[str, list[int]] = {}
    for position, name in enumerate(names):
        if name.casefold() in needed:
            found.setdefault(needed[name.casefold()], []).append(position)
    missing = [source for source in needed.values() if source not in found]
    repeated = [source for source, positions in found.items() if len(positions) > 1]
    if missing or repeated:
        problem = "; ".join(
            part for part in (f"missing {missing}" if missing else "", f"named more than once {repeated}" if repeated else "") if part
        )
        raise BulkFormatError(
            f"unexpected bulk CSV header ({len(names)} columns; {problem}): "
            "is this BasicCompanyDataAsOneFile from download.companieshouse.gov.uk?"
        )
    columns = [f"unused_{position}" for position in range(len(names))]
    for source, [position] in found.items():
        columns[position] = column_name(source)
    return columns


def csv_member_info(archive: zipfile.ZipFile) -> zipfile.ZipInfo:
    """The central-directory entry of the one CSV inside a published .zip (its declared sizes are
    checked against the loader's caps before anything is read: ``file_size``, ``compress_size``)."""
    members = [info for info in archive.infolist() if info.filename.lower().endswith(".csv")]
    if len(members) != 1:
        raise BulkFormatError(f"{archive.filename} should hold exactly one .csv, found {[m.filename for m in members][:5]}")
    return members[0]


def csv_member(zip_path: Path) -> str:
    """The name of the one CSV inside a published .zip."""
    with zipfile.ZipFile(zip_path) as archive:
        return csv_member_info(archive).filename


# --- A realistic sample, for local runs and tests ------------------------------------------------

_SAMPLE_STATUSES = [
    ("Active", 880), ("Active - Proposal to Strike off", 40), ("Liquidation", 30), ("In Administration", 8),
    ("Voluntary Arrangement", 5), ("Live but Receiver Manager on at least one charge", 2),
    ("RECEIVER MANAGER / ADMINISTRATIVE RECEIVER", 1), ("Converted/Closed", 2), ("Dissolved", 2),
]
_NAME_WORDS = ["NORTH", "ACME", "BRIGHT", "OAK", "RIVER", "STONE", "BLUE", "HARBOUR", "KINGS", "GREEN",
               "SUMMIT", "ALPHA", "CASTLE", "MILL", "VALE", "CROWN", "FOX", "LAKE", "PARK", "BRIDGE"]
_NAME_SUFFIXES = ["LIMITED", "LTD", "LTD.", "HOLDINGS LIMITED", "SERVICES LTD", "LLP", "PLC", "(UK) LIMITED"]
_POST_AREAS = ["SW1A", "EC1A", "M1", "B33", "LS1", "CF10", "EH1", "G2", "BT1", "BS1", "NE1", "CB2", "OX1"]
_TOWNS = ["LONDON", "MANCHESTER", "BIRMINGHAM", "LEEDS", "CARDIFF", "EDINBURGH", "GLASGOW", "BELFAST"]
_PREFIXES = [("", 85), ("SC", 8), ("NI", 3), ("OC", 3), ("SL", 1)]


def sample_company_number(index: int, rng: random.Random) -> str:
    prefix = rng.choices([p for p, _ in _PREFIXES], [w for _, w in _PREFIXES])[0]
    return f"{prefix}{index:0{8 - len(prefix)}d}"


def _postcode(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.02:
        return ""  # missing address
    code = f"{rng.choice(_POST_AREAS)} {rng.randint(1, 9)}{rng.choice('ABDEFGHJLNPQRSTUWXYZ')}{rng.choice('ABDEFGHJLNPQRSTUWXYZ')}"
    if roll < 0.05:
        return code.lower()  # as keyed in: the loader normalises
    if roll < 0.07:
        return code.replace(" ", "  ")
    return code


def sample_rows(rows: int, seed: int = 0) -> Iterator[list[str]]:
    """Rows shaped like the published file: every column present, most of them sparsely filled."""
    rng = random.Random(seed)
    statuses, weights = zip(*_SAMPLE_STATUSES)
    first_day = date(1900, 1, 1)
    span = (date(2026, 10, 31) - first_day).days
    width = len(HEADER)
    for index in range(1, rows + 1):
        number = sample_company_number(index, rng)
        name = f"{rng.choice(_NAME_WORDS)} {rng.choice(_NAME_WORDS)} {index} {rng.choice(_NAME_SUFFIXES)}"
        created = first_day + timedelta(days=int(span * rng.random() ** 0.3))
        row = [""] * width
        row[0], row[1] = name, number
        row[4] = f"{rng.randint(1, 300)} HIGH STREET"
        row[6] = rng.choice(_TOWNS)
        row[8] = "ENGLAND"
        row[9] = _postcode(rng)
        row[10] = "Private Limited Company"
        row[11] = rng.choices(statuses, weights)[0]
        row[12] = "United Kingdom"
        row[14] = created.strftime(DATE_FORMAT) if rng.random() > 0.001 else ""
        row[26] = "70229 - Management consultancy activities other than financial management"
        row[32] = f"http://business.data.gov.uk/id/company/{number}"
        yield row


def write_sample(path: Path, rows: int = 100_000, seed: int = 0) -> Path:
    """Write a sample BasicCompanyDataAsOneFile CSV (or .zip, by suffix) with `rows` companies."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(stream) -> None:
        stream.write(",".join(HEADER) + "\r\n")  # the header line as published: not quoted
        csv.writer(stream, quoting=csv.QUOTE_ALL, lineterminator="\r\n").writerows(sample_rows(rows, seed))

    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            with archive.open(path.with_suffix(".csv").name, "w") as member:
                import io

                with io.TextIOWrapper(member, encoding="utf-8", newline="") as text:
                    write(text)
    else:
        with path.open("w", encoding="utf-8", newline="") as stream:
            write(stream)
    return path
