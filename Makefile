# The two commands of the README: `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser run demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/ch-pipeline run

demo: $(STAMP)
	$(BIN)/ch-pipeline demo

# The browser test drives Debian's chromium (never a downloaded browser). Installed where we can
# (root with apt-get); elsewhere that one test is skipped with the reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) ; } || \
	  echo "note: chromium is not installed and could not be installed; the browser test will be skipped"

# The offline BigQuery emulator (crucible-emulator) pins its own duckdb/sqlglot, so it gets its own
# virtualenv; without PyPI its tests are skipped with the reason (ch_pipeline_tests/bigquery_emulator.py).
BQ_STAMP := .venv-bq/.installed
$(BQ_STAMP): $(STAMP) ch_pipeline_tests/bigquery_emulator.py
	@$(BIN)/python -m ch_pipeline_tests.bigquery_emulator && touch $@ || \
	  echo "note: .venv-bq could not be created; the BigQuery emulator tests will be skipped"

test: $(STAMP) browser $(BQ_STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf .ch-data
