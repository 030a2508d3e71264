"""The bulk snapshot -> ``company_house_bulk``: one cleaning query, written once, with the few dialect
differences passed in (docs/architecture.md §3: quoted fields, DD/MM/YYYY, title-case statuses),
and the load steps every warehouse shares (``load_cleaned``). Nothing goes through pandas.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from ch_pipeline.companies_house.bulk_csv import BULK_SOURCE_COLUMNS, BULK_STATUS_TO_STREAM, check_header, column_name
from ch_pipeline.warehouse.bulk_load import DEFAULT_LIMITS, HEADER_LINE_LIMIT, BulkLimits, Progress, local_csv
from ch_pipeline.warehouse.schema import BULK_COLUMNS


@dataclass(frozen=True)
class Dialect:
    """The SQL that differs between warehouses in the cleaning query (each warehouse module has its own)."""

    regexp_replace_all: Callable[[str, str, str], str]
    parse_dmy_date: Callable[[str], str]
    month_start: Callable[[str], str]
    # None: the cleaning query keeps one row per company itself (a window over every row). Otherwise
    # the statement, given the target table, that deletes the repeats from the table just written, in
    # the same transaction: it costs a scan of one column when the file has no repeats (the published
    # file has none), where the window buffers and sorts every row of the file (at 5.5M rows on
    # DuckDB: 1.33 GiB peak RSS with the window, 0.68 GiB without).
    drop_repeats: Callable[[str], str] | None = None


def _status_sql(value: str, dialect: Dialect) -> str:
    """Bulk status -> the stream's enumeration; an unknown status becomes a lower-case slug."""
    key = f"lower(trim({value}))"
    cases = " ".join(f"when '{bulk}' then '{stream}'" for bulk, stream in BULK_STATUS_TO_STREAM.items())
    slug = dialect.regexp_replace_all(key, "[^a-z0-9]+", "-")
    return f"case {key} {cases} else nullif({slug}, '') end"


def _postcode_sql(value: str, dialect: Dialect) -> str:
    """Upper case, single inner space, NULL when blank: the form the stream carries."""
    return f"nullif({dialect.regexp_replace_all(f'upper(trim({value}))', '[[:space:]]+', ' ')}, '')"


def cleaning_select(raw_relation: str, dialect: Dialect, file_date: date, one_per_company: bool = True) -> str:
    """SELECT producing BULK_COLUMNS from the raw (all-text) bulk columns of `raw_relation`, every row
    stamped with the file's date.

    One row per company: the published file has no company twice, but a repeat must not break the
    core's unique key; which row is kept is deterministic (the greatest name), on both engines. With
    `one_per_company` false the repeats are left in, for ``Dialect.drop_repeats`` to delete.
    """
    col = {ours: column_name(theirs) for ours, theirs in BULK_SOURCE_COLUMNS.items()}
    created = dialect.parse_dmy_date(col["date_of_creation"])
    expressions = {
        "company_name": f"nullif(trim({col['company_name']}), '')",
        "company_number": f"upper(trim({col['company_number']}))",
        "company_status": _status_sql(col["company_status"], dialect),
        "date_of_creation": created,
        "postal_code": _postcode_sql(col["postal_code"], dialect),
        "month_of_creation": dialect.month_start(created),
        "file_date": f"date '{file_date.isoformat()}'",
    }
    assert list(expressions) == [c.name for c in BULK_COLUMNS], "cleaning must produce BULK_COLUMNS in order"
    select_list = ",\n  ".join(f"{sql} as {name}" for name, sql in expressions.items())
    select = (
        f"select\n  {select_list}\nfrom {raw_relation}\n"
        f"where nullif(trim({col['company_number']}), '') is not null"
    )
    if not one_per_company:
        return select
    return (
        f"{select}\n"
        f"qualify row_number() over (\n"
        f"  partition by upper(trim({col['company_number']})) order by trim({col['company_name']}) desc\n) = 1"
    )



def staging_columns(path: Path) -> list[str]:
    """The SQL names of the CSV's columns in file order, matched by header name (``check_header``):
    the staging columns every warehouse reads the file into, so the cleaning query finds each needed
    column by name wherever it stands."""
    with path.open(encoding="utf-8-sig", newline="") as stream:
        return check_header(stream.readline(HEADER_LINE_LIMIT))


def load_cleaned(
    source: str,
    file_date: date,
    target: str,
    dialect: Dialect,
    stage: Callable[[Path], str],
    execute: Callable[[list[str]], None],
    progress: Progress = print,
    limits: BulkLimits = DEFAULT_LIMITS,
) -> None:
    """The bulk load of every warehouse: the CSV that ``source`` names (the file of ``file_date``), on local disk within
    ``limits``; ``stage(path)`` makes it readable as all-text columns named by ``staging_columns``
    and returns the relation to read; ``execute`` runs, as one transaction, the statements that replace
    ``target`` (quoted for the dialect) with the cleaned rows."""
    with local_csv(source, progress, limits) as path:
        raw = stage(path)
        progress(f"cleaning {path.name} -> {target}")
        select = cleaning_select(raw, dialect, file_date, one_per_company=dialect.drop_repeats is None)
        statements = [f"create or replace table {target} as\n{select}"]
        if dialect.drop_repeats is not None:
            statements.append(dialect.drop_repeats(target))
        execute(statements)
