{{ config(materialized='incremental', incremental_strategy='merge', unique_key='company_number') }}
{#- Tombstones: the latest `deleted` event per company. The core drops a deleted company's row, so
    without this a late, older `changed` event would resurrect it. -#}
-- depends_on: {{ ref('snapshot_streamed_data') }}

{% if is_incremental() %}
select
    snapshot.company_number,
    snapshot.published_at as deleted_published_at,
    snapshot.kafka_offset as deleted_kafka_offset
from {{ ref('snapshot_streamed_data') }} as snapshot
left join {{ this }} as tombstone on tombstone.company_number = snapshot.company_number
where snapshot.event_type = 'deleted'
  and (
      tombstone.company_number is null
      or {{ ch_dbt.event_is_newer('snapshot.published_at', 'snapshot.kafka_offset', 'tombstone.deleted_published_at', 'tombstone.deleted_kafka_offset') }}
  )
{% else %}
-- First build (or full refresh): every deletion in the stream, like the core's first build.
select company_number, published_at as deleted_published_at, kafka_offset as deleted_kafka_offset
from (
    select
        company_number, published_at, kafka_offset,
        row_number() over (
            partition by company_number
            order by {{ ch_dbt.event_order_time('published_at') }} desc, kafka_offset desc
        ) as deletion_rank
    from {{ source('warehouse', 'company_house_stream') }}
    where event_type = 'deleted' and company_number is not null
      and coalesce(resource_kind, 'company-profile') = 'company-profile'
) as deletions
where deletion_rank = 1
{% endif %}
