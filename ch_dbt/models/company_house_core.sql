{{ config(
    materialized='incremental',
    incremental_strategy='merge',
    unique_key='company_number',
    cluster_by=['company_number'],
    merge_delete_when="DBT_INTERNAL_SOURCE.merge_action = 'delete'",
) }}
{#- The current state of every company (DESIGN §6): the bulk snapshot as baseline, the stream's
    events merged on top. The merge source has one row per company (the snapshot guarantees it),
    so MERGE never sees two source rows for one target row (BigQuery rejects that). Clustering by
    company_number serves that MERGE's join on BigQuery; DuckDB ignores it. -#}
-- depends_on: {{ ref('snapshot_streamed_data') }}
-- depends_on: {{ ref('company_house_deletions') }}

{% if is_incremental() %}

-- Upserts: the newest event is a `changed` newer than the row held and than any deletion.
select
    'upsert' as merge_action,
    snapshot.company_name,
    snapshot.company_number,
    snapshot.company_status,
    snapshot.date_of_creation,
    snapshot.postal_code,
    {{ ch_dbt.month_start('snapshot.date_of_creation') }} as month_of_creation,
    snapshot.published_at as last_published_at,
    snapshot.kafka_offset as last_kafka_offset
from {{ ref('snapshot_streamed_data') }} as snapshot
left join {{ this }} as core on core.company_number = snapshot.company_number
left join {{ ref('company_house_deletions') }} as tombstone on tombstone.company_number = snapshot.company_number
where snapshot.event_type = 'changed'
  -- An older event never overwrites a newer one, nor resurrects a company deleted later.
  and (core.company_number is null
       or {{ ch_dbt.event_is_newer('snapshot.published_at', 'snapshot.kafka_offset', 'core.last_published_at', 'core.last_kafka_offset') }})
  and (tombstone.company_number is null
       or {{ ch_dbt.event_is_newer('snapshot.published_at', 'snapshot.kafka_offset', 'tombstone.deleted_published_at', 'tombstone.deleted_kafka_offset') }})

union all

-- Deletions: the newest event is a `deleted` newer than the row held (the merge removes the row).
-- merge_action is not a column of the table: the merge lists the table's columns only.
select
    'delete' as merge_action,
    core.company_name,
    core.company_number,
    core.company_status,
    core.date_of_creation,
    core.postal_code,
    core.month_of_creation,
    core.last_published_at,
    core.last_kafka_offset
from {{ ref('snapshot_streamed_data') }} as snapshot
join {{ this }} as core on core.company_number = snapshot.company_number
where snapshot.event_type = 'deleted'
  and {{ ch_dbt.event_is_newer('snapshot.published_at', 'snapshot.kafka_offset', 'core.last_published_at', 'core.last_kafka_offset') }}

{% else %}

-- First build (or full refresh): the bulk baseline, then the latest event of every company in the
-- whole stream table (not only the snapshot), so a rebuild loses nothing already applied.
with stream_latest as (
    {{ ch_dbt.latest_event_per_company(source('warehouse', 'company_house_stream')) }}
)

select
    bulk.company_name,
    bulk.company_number,
    bulk.company_status,
    bulk.date_of_creation,
    bulk.postal_code,
    bulk.month_of_creation,
    cast(null as {{ dbt.type_timestamp() }}) as last_published_at,
    cast(null as {{ dbt.type_bigint() }}) as last_kafka_offset
from {{ source('warehouse', 'company_house_bulk') }} as bulk
where bulk.company_number not in (select company_number from stream_latest)

union all

select
    company_name,
    company_number,
    company_status,
    date_of_creation,
    postal_code,
    {{ ch_dbt.month_start('date_of_creation') }} as month_of_creation,
    published_at as last_published_at,
    kafka_offset as last_kafka_offset
from stream_latest
where event_type = 'changed'

{% endif %}
