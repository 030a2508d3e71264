{{ config(
    materialized='incremental',
    incremental_strategy='merge',
    unique_key='company_number',
    cluster_by=['company_number'],
    merge_delete_when="DBT_INTERNAL_SOURCE.merge_action = 'delete'",
    on_schema_change='append_new_columns',
) }}
{#- The current state of every company (docs/architecture.md §6): the monthly bulk file and the stream's
    events, each company's newest fact winning (macros/event_order.sql, macros/bulk_file.sql). The merge source has one row per company (the snapshot guarantees it),
    so MERGE never sees two source rows for one target row (BigQuery rejects that). Clustering by
    company_number serves that MERGE's join on BigQuery; DuckDB ignores it.
    Each row keeps the fields that order the event it holds (macros/event_order.sql): last_published_at,
    last_kafka_offset, and since issue 16 last_kafka_partition, last_timepoint, last_order_time. A core
    built before those three existed gets them appended by on_schema_change (NULL in its old rows,
    which are compared as before until replaced); merge_action is never appended (macros/merge.sql). -#}
-- depends_on: {{ ref('snapshot_streamed_data') }}
-- depends_on: {{ ref('company_house_deletions') }}
{%- set files = ch_dbt.bulk_files() %}
{%- set fact_columns = 'company_name, company_number, company_status, date_of_creation, postal_code, '
                       ~ 'published_at, event_type, order_time, timepoint, kafka_partition, kafka_offset' %}

{% if is_incremental() %}
{%- set held = ch_dbt.stored_event('core', 'last_', this) %}
{%- set tombstone = ch_dbt.stored_event('tombstone', 'deleted_', ref('company_house_deletions')) %}
{%- set newest = ch_dbt.stream_event('newest') %}
{%- set pending = files.pending %}

with facts as (
    select {{ fact_columns }} from {{ ref('snapshot_streamed_data') }}
    {%- if pending %}
    -- A newer bulk file: each company it lists, as a fact at the file's instant ...
    union all
    {{ ch_dbt.file_facts(source('warehouse', 'company_house_bulk'), files.loaded) }}
    -- ... and each company it lacks that the core holds live and older than the file: gone.
    union all
    {%- set file_event = {'order_time': ch_dbt.file_instant("date '" ~ pending ~ "'"), 'timepoint': 'cast(null as ' ~ dbt.type_bigint() ~ ')',
                          'partition': 'cast(null as ' ~ dbt.type_int() ~ ')', 'offset': 'cast(null as ' ~ dbt.type_bigint() ~ ')'} %}
    select
        core.company_name, core.company_number, core.company_status, core.date_of_creation, core.postal_code,
        cast(null as {{ dbt.type_timestamp() }}) as published_at, 'deleted' as event_type,
        {{ file_event.order_time }} as order_time, {{ file_event.timepoint }} as timepoint,
        {{ file_event.partition }} as kafka_partition, {{ file_event.offset }} as kafka_offset
    from {{ this }} as core
    left join {{ source('warehouse', 'company_house_bulk') }} as bulk on bulk.company_number = core.company_number
    where bulk.company_number is null
      and coalesce(core.company_status, '') not in {{ ch_dbt.closed_statuses() }}
      and {{ ch_dbt.event_is_newer(file_event, held) }}
    {%- endif %}
),

newest as (
    {{ ch_dbt.newest_fact_per_company('facts') }}
)

-- Upserts: the newest fact is a `changed` newer than the row held and than any deletion.
select
    'upsert' as merge_action,
    newest.company_name,
    newest.company_number,
    newest.company_status,
    newest.date_of_creation,
    newest.postal_code,
    {{ ch_dbt.month_start('newest.date_of_creation') }} as month_of_creation,
    newest.published_at as last_published_at,
    newest.kafka_offset as last_kafka_offset,
    newest.kafka_partition as last_kafka_partition,
    newest.timepoint as last_timepoint,
    newest.order_time as last_order_time
from newest
left join {{ this }} as core on core.company_number = newest.company_number
left join {{ ref('company_house_deletions') }} as tombstone on tombstone.company_number = newest.company_number
where newest.event_type = 'changed'
  -- An older event never overwrites a newer one, nor resurrects a company deleted later.
  and (core.company_number is null or {{ ch_dbt.event_is_newer(newest, held) }})
  and (tombstone.company_number is null or {{ ch_dbt.event_is_newer(newest, tombstone) }})
  and not {{ ch_dbt.contradicted_by_file('newest', files.newest) }}

union all

-- Deletions: the newest fact is a `deleted` newer than the row held (the merge removes the row).
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
from newest
join {{ this }} as core on core.company_number = newest.company_number
where newest.event_type = 'deleted'
  and {{ ch_dbt.event_is_newer(newest, held) }}

{% else %}

-- First build (or full refresh): the bulk file's rows and the latest event of every company in the
-- whole stream table (not only the snapshot), so a rebuild loses nothing already applied.
with facts as (
    select {{ fact_columns }} from ({{ ch_dbt.latest_event_per_company(source('warehouse', 'company_house_stream')) }}) as stream_latest
    union all
    {{ ch_dbt.file_facts(source('warehouse', 'company_house_bulk'), files.loaded) }}
),

newest as (
    {{ ch_dbt.newest_fact_per_company('facts') }}
)

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
from newest
where event_type = 'changed'
  and not {{ ch_dbt.contradicted_by_file('newest', files.newest) }}

{% endif %}
