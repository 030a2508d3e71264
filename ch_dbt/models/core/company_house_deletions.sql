{{ config(
    materialized='incremental',
    incremental_strategy='merge',
    unique_key='company_number',
    on_schema_change='append_new_columns',
) }}
{#- Tombstones: the latest `deleted` event per company, with the fields that order it (macros/event_order.sql).
    The core drops a deleted company's row, so without this a late, older `changed` event would resurrect it.
    A table from before the order columns existed gets them appended (NULL: compared as before). -#}
-- depends_on: {{ ref('snapshot_streamed_data') }}

{% if is_incremental() %}
{%- set held = ch_dbt.stored_event('tombstone', 'deleted_', this) %}
select
    snapshot.company_number,
    snapshot.published_at as deleted_published_at,
    snapshot.kafka_offset as deleted_kafka_offset,
    snapshot.kafka_partition as deleted_kafka_partition,
    snapshot.timepoint as deleted_timepoint,
    snapshot.order_time as deleted_order_time
from {{ ref('snapshot_streamed_data') }} as snapshot
left join {{ this }} as tombstone on tombstone.company_number = snapshot.company_number
where snapshot.event_type = 'deleted'
  and (
      tombstone.company_number is null
      or {{ ch_dbt.event_is_newer(ch_dbt.stream_event('snapshot'), held) }}
  )
{% else %}
-- First build (or full refresh): every deletion in the stream, like the core's first build.
select
    company_number,
    published_at as deleted_published_at,
    kafka_offset as deleted_kafka_offset,
    kafka_partition as deleted_kafka_partition,
    timepoint as deleted_timepoint,
    order_time as deleted_order_time
from (
    select
        *,
        row_number() over (partition by company_number order by {{ ch_dbt.event_order_desc() }}) as deletion_rank
    from (
        select
            company_number, published_at, timepoint, kafka_partition, kafka_offset,
            {{ ch_dbt.event_order_time('published_at', 'kafka_timestamp', 'ingested_at') }} as order_time
        from {{ source('warehouse', 'company_house_stream') }}
        where event_type = 'deleted' and company_number is not null
          and coalesce(resource_kind, 'company-profile') = 'company-profile'
    ) as events
) as deletions
where deletion_rank = 1
{% endif %}
