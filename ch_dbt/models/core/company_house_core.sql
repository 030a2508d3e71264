{{ config(
    materialized='incremental',
    incremental_strategy='merge',
    unique_key='company_number',
    cluster_by=['company_number'],
    merge_delete_when="DBT_INTERNAL_SOURCE.merge_action = 'delete'",
    on_schema_change='append_new_columns',
) }}
{#- The current state of every company (docs/architecture.md §6): the bulk snapshot as baseline, the stream's
    events merged on top. The merge source has one row per company (the snapshot guarantees it),
    so MERGE never sees two source rows for one target row (BigQuery rejects that). Clustering by
    company_number serves that MERGE's join on BigQuery; DuckDB ignores it.
    Each row keeps the fields that order the event it holds (macros/event_order.sql): last_published_at,
    last_kafka_offset, and since issue 16 last_kafka_partition, last_timepoint, last_order_time. A core
    built before those three existed gets them appended by on_schema_change (NULL in its old rows,
    which are compared as before until replaced); merge_action is never appended (macros/merge.sql). -#}
-- depends_on: {{ ref('snapshot_streamed_data') }}
-- depends_on: {{ ref('company_house_deletions') }}

{% if is_incremental() %}
{%- set held = ch_dbt.stored_event('core', 'last_', this) %}
{%- set tombstone = ch_dbt.stored_event('tombstone', 'deleted_', ref('company_house_deletions')) %}
{%- set newest = ch_dbt.stream_event('snapshot') %}

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
    snapshot.kafka_offset as last_kafka_offset,
    snapshot.kafka_partition as last_kafka_partition,
    snapshot.timepoint as last_timepoint,
    snapshot.order_time as last_order_time
from {{ ref('snapshot_streamed_data') }} as snapshot
left join {{ this }} as core on core.company_number = snapshot.company_number
left join {{ ref('company_house_deletions') }} as tombstone on tombstone.company_number = snapshot.company_number
where snapshot.event_type = 'changed'
  -- An older event never overwrites a newer one, nor resurrects a company deleted later.
  and (core.company_number is null or {{ ch_dbt.event_is_newer(newest, held) }})
  and (tombstone.company_number is null or {{ ch_dbt.event_is_newer(newest, tombstone) }})

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
    core.last_kafka_offset,
    {{ held.partition }} as last_kafka_partition,
    {{ held.timepoint }} as last_timepoint,
    {{ held.order_time }} as last_order_time
from {{ ref('snapshot_streamed_data') }} as snapshot
join {{ this }} as core on core.company_number = snapshot.company_number
where snapshot.event_type = 'deleted'
  and {{ ch_dbt.event_is_newer(newest, held) }}

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
    cast(null as {{ dbt.type_bigint() }}) as last_kafka_offset,
    cast(null as {{ dbt.type_int() }}) as last_kafka_partition,
    cast(null as {{ dbt.type_bigint() }}) as last_timepoint,
    cast(null as {{ dbt.type_timestamp() }}) as last_order_time
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
    kafka_offset as last_kafka_offset,
    kafka_partition as last_kafka_partition,
    timepoint as last_timepoint,
    order_time as last_order_time
from stream_latest
where event_type = 'changed'

{% endif %}
