"""Corpus, dbt layer: the core row a company ends with after the real dbt builds (see conftest.py)."""

from __future__ import annotations

import pytest

from ch_pipeline_tests.corpus.cases import DBT_CASES, KNOWN_CORE_BUGS, LANDING_OUTCOMES_IN_CORE, DbtCase
from ch_pipeline_tests.corpus.conftest import CorpusRun


@pytest.mark.parametrize("case", DBT_CASES, ids=lambda case: case.name)
def test_dbt_case(case: DbtCase, corpus_run: CorpusRun):
    number = corpus_run.dbt_case_numbers[DBT_CASES.index(case)]
    if case.batch_1:  # the first build took the batch-1 event over the bulk row
        first = case.batch_1[-1]
        assert corpus_run.core_after_batch_1[number] == (first["company_name"], first["company_status"], first["postal_code"])
    assert corpus_run.core[number] == case.expected


@pytest.mark.parametrize(
    "number",
    [
        pytest.param(number, marks=[pytest.mark.xfail(strict=True, reason=KNOWN_CORE_BUGS[number])] if number in KNOWN_CORE_BUGS else [])
        for number in LANDING_OUTCOMES_IN_CORE
    ],
)
def test_landing_outcomes_in_the_core(number: str, corpus_run: CorpusRun):
    assert corpus_run.core.get(number) == LANDING_OUTCOMES_IN_CORE[number]
