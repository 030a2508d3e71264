{#- Stream rows not yet applied, one per company (docs/architecture.md §6): its newest event in the order of
    macros/event_order.sql, with the fields that order it (order_time, timepoint, Kafka partition, offset).
    "Not yet applied" is exact per Kafka partition: offset beyond the watermark (no timestamp ties,
    no late-arrival loss), or landed after the watermark was taken (an earlier offset range that
    landed late, or a re-landed range: re-applying is harmless, the core keeps the newest event).
    When this build makes the core from scratch (first build, --full-refresh), the core reads the
    whole stream table, and so does the snapshot: the watermark then covers exactly what the core read. -#}
{%- set watermark = none if ch_dbt.core_is_built_from_scratch() else ch_dbt.previous_watermark() %}

with scanned as (
    select stream.*
    from {{ source('warehouse', 'company_house_stream') }} as stream
    {%- if watermark is not none %}
    left join {{ watermark }} as watermark
      on watermark.kafka_partition = stream.kafka_partition
    where watermark.kafka_partition is null
       or stream.kafka_offset > watermark.last_offset
       or stream.ingested_at > watermark.last_ingested_at
    {%- endif %}
),

-- How far this snapshot read each Kafka partition: get_last_timestamp stores it as the next watermark.
scanned_bounds as (
    select
        kafka_partition,
        max(kafka_offset) as scanned_offset,
        max(published_at) as scanned_published_at,
        max(ingested_at) as scanned_ingested_at
    from scanned
    group by kafka_partition
),

latest as (
    {{ ch_dbt.latest_event_per_company('scanned') }}
)

select
    latest.*,
    scanned_bounds.scanned_offset,
    scanned_bounds.scanned_published_at,
    scanned_bounds.scanned_ingested_at
from latest
join scanned_bounds on scanned_bounds.kafka_partition = latest.kafka_partition
