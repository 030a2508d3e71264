# syntax=docker/dockerfile:1
# One image for the whole production stack (docker-compose.yml): the Dagster code server and its
# run workers, dagster-webserver, dagster-daemon and the producer (`ch-pipeline produce`).
# No credentials are baked in: they arrive at run time through env files and mounted secret files.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    CH_DATA_DIR=/var/lib/ch-pipeline \
    CH_CHECKPOINT_PATH=/var/lib/ch-pipeline/producer.checkpoint

# A fixed, non-root uid: mounted secret files (deploy/secrets/) must be readable by it.
ARG APP_UID=10001
RUN groupadd --system --gid ${APP_UID} ch \
 && useradd --system --uid ${APP_UID} --gid ch --home-dir /opt/ch-pipeline --shell /usr/sbin/nologin ch

WORKDIR /opt/ch-pipeline

# Dependencies first, from pyproject.toml alone, so code changes do not reinstall them. The install
# is editable: ch_pipeline is imported from /opt/ch-pipeline, beside ch_dbt/, so the dbt project is
# where the code looks for it (relative to the package), and the source copied below is what runs.
COPY pyproject.toml README.md ./
RUN mkdir ch_pipeline && touch ch_pipeline/__init__.py \
 && pip install -e . \
 && rm -rf ch_pipeline

COPY --chown=ch:ch ch_pipeline ./ch_pipeline
COPY --chown=ch:ch ch_dbt ./ch_dbt
COPY --chown=ch:ch deploy/dagster.yaml deploy/workspace.yaml ${DAGSTER_HOME}/

# Writable state, owned by the app user so the named volumes mounted here inherit the ownership.
RUN mkdir -p ${CH_DATA_DIR} /opt/dagster/compute_logs \
 && chown -R ch:ch ${CH_DATA_DIR} /opt/dagster

USER ch

# The dbt manifest ships in the image: Dagster loads the dbt assets from ch_dbt/target/manifest.json
# without running dbt at code-load time. Parsed for the production target (bigquery); dbt parse
# needs no credentials or network (measured with dbt-bigquery 1.11).
ARG DBT_TARGET=bigquery
RUN cd ch_dbt \
 && if [ -f packages.yml ] || [ -f dependencies.yml ]; then dbt deps --profiles-dir .; fi \
 && DBT_TARGET=${DBT_TARGET} dbt parse --profiles-dir . \
 && test -s target/manifest.json

# 4000: the code server (gRPC); 3000: dagster-webserver. docker-compose.yml picks the command.
EXPOSE 4000 3000
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "ch_pipeline.definitions"]
