{{ config(materialized='incremental', incremental_strategy='merge', unique_key='kafka_partition') }}
{#- The watermark: per Kafka partition, how far the stream has been applied to the core (docs/architecture.md §6).
    Built from what the snapshot read, never from the stream table (which may have grown since).
    An empty snapshot merges no rows, so the watermark is unchanged; GREATEST keeps it monotonic.
    A rebuild (--full-refresh) replaces the table: it is rebuilt from the snapshot AND the table it
    replaces (read in the same statement: dbt-duckdb builds the new table before swapping it in,
    BigQuery's CREATE OR REPLACE reads the old one), so it never empties nor moves backwards, and
    previous_last_offset lets never_decreases see the rebuild. When the core is rebuilt too, the
    snapshot read the whole stream table like the core did (snapshot_streamed_data). -#}
-- Runs after the core: if the core fails, dbt skips this model and the batch is re-read next time.
-- depends_on: {{ ref('company_house_core') }}

with batch as (
    select
        kafka_partition,
        max(scanned_offset) as last_offset,
        max(scanned_published_at) as last_published_at,
        max(scanned_ingested_at) as last_ingested_at
    from {{ ref('snapshot_streamed_data') }}
    group by kafka_partition
)

{% if is_incremental() %}
select
    batch.kafka_partition,
    {{ ch_dbt.greatest_non_null('batch.last_offset', 'previous.last_offset') }} as last_offset,
    {{ ch_dbt.greatest_non_null('batch.last_published_at', 'previous.last_published_at') }} as last_published_at,
    {{ ch_dbt.greatest_non_null('batch.last_ingested_at', 'previous.last_ingested_at') }} as last_ingested_at,
    previous.last_offset as previous_last_offset,
    current_timestamp as updated_at
from batch
left join {{ this }} as previous on previous.kafka_partition = batch.kafka_partition
{% else %}
{%- set previous = load_relation(this) if execute else none %}
{%- if previous is not none %}
-- A rebuild: every partition of the batch or of the table being replaced, each value the larger.
, applied as (
    select kafka_partition, last_offset, last_published_at, last_ingested_at from batch
    union all
    select kafka_partition, last_offset, last_published_at, last_ingested_at from {{ previous }}
),

rebuilt as (
    select
        kafka_partition,
        max(last_offset) as last_offset,
        max(last_published_at) as last_published_at,
        max(last_ingested_at) as last_ingested_at
    from applied
    group by kafka_partition
)

select
    rebuilt.kafka_partition,
    rebuilt.last_offset,
    rebuilt.last_published_at,
    rebuilt.last_ingested_at,
    previous.last_offset as previous_last_offset,
    current_timestamp as updated_at
from rebuilt
left join {{ previous }} as previous on previous.kafka_partition = rebuilt.kafka_partition
{%- else %}
-- The first build: no watermark yet.
select
    kafka_partition,
    last_offset,
    last_published_at,
    last_ingested_at,
    cast(null as {{ dbt.type_bigint() }}) as previous_last_offset,
    current_timestamp as updated_at
from batch
{%- endif %}
{% endif %}
