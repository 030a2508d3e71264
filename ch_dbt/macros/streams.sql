{#- The current state of every non-companies stream (issue 15): one model per stream, each a call of
    stream_current('<stream>'); a stream is the configuration below, not a copy of SQL.

    stream_catalogue(): per model prefix, the landing table ({default_topic}_stream, landed by Dagster),
    whether items sit under a company (disqualified officers do not), and the typed columns of the
    row fields users query (the landing table holds every row field as text: scalars as text,
    lists/objects as compact JSON text). `fields` must list the columns of the stream's
    StreamSpec.row_fields (ch_pipeline/companies_house/streams.py), in order;
    ch_pipeline_tests/dbt/test_stream_models.py checks it. Types: string, date, bigint, json (the JSON
    text, kept as STRING; e.g. natures_of_control, insolvency case types). -#}
{% macro stream_catalogue() %}
{{ return({
    'filings': {'table': 'company_house_filings_stream', 'under_company': true,
                'fields': [('transaction_id', 'string'), ('category', 'string'), ('type', 'string'), ('date', 'date'), ('description', 'string')]},
    'officers': {'table': 'company_house_officers_stream', 'under_company': true,
                 'fields': [('name', 'string'), ('officer_role', 'string'), ('appointed_on', 'date'), ('resigned_on', 'date')]},
    'pscs': {'table': 'company_house_pscs_stream', 'under_company': true,
             'fields': [('name', 'string'), ('kind', 'string'), ('natures_of_control', 'json'), ('notified_on', 'date'), ('ceased_on', 'date')]},
    'charges': {'table': 'company_house_charges_stream', 'under_company': true,
                'fields': [('charge_number', 'bigint'), ('status', 'string'), ('created_on', 'date'), ('satisfied_on', 'date')]},
    'insolvency': {'table': 'company_house_insolvency_stream', 'under_company': true,
                   'fields': [('status', 'string'), ('case_types', 'json'), ('case_dates', 'json')]},
    'disqualified_officers': {'table': 'company_house_disqualified_officers_stream', 'under_company': false,
                              'fields': [('name', 'string'), ('forename', 'string'), ('surname', 'string'), ('kind', 'string'),
                                         ('disqualified_from', 'date'), ('disqualified_until', 'date')]},
    'exemptions': {'table': 'company_house_exemptions_stream', 'under_company': true,
                   'fields': [('exemption_types', 'json')]},
    'psc_statements': {'table': 'company_house_psc_statements_stream', 'under_company': true,
                       'fields': [('statement', 'string'), ('notified_on', 'date'), ('ceased_on', 'date')]},
}) }}
{% endmacro %}

{#- The key of an item as Companies House keys it, as one column (the merge's unique_key):
    "<company_number>/<item_id>", or the item id alone for items not under a company. For the
    one-item-per-company streams (insolvency, exemptions) item_id is the company number. -#}
{% macro stream_item_key(spec) -%}
{%- if spec.under_company -%}coalesce(company_number, '') || '/' || item_id{%- else -%}item_id{%- endif -%}
{%- endmacro %}

{% macro stream_field_typed(column, type) -%}
{%- set quoted = adapter.quote(column) -%}
{%- if type == 'date' -%}{{ ch_dbt.safe_cast(quoted, 'date') }}
{%- elif type == 'bigint' -%}{{ ch_dbt.safe_cast(quoted, dbt.type_bigint()) }}
{%- else -%}{{ quoted }}{%- endif %} as {{ quoted }}
{%- endmacro %}

{#- The current-state model of one stream (config in dbt_project.yml, models/streams): one row per live
    item, the newest event per item by the core's order rule (macros/event_order.sql), a `deleted`
    newest event removing the item.

    Incremental and exact: a build takes the items touched by the rows landed since the newest event it
    holds (ingested_at, less `stream_reprocess_hours` for a landing committed late), re-ranks ALL the
    landed events of those items (not only the new ones), and merges the winner: an upsert, or a delete
    when the winner is a `deleted` event (macros/merge.sql). Re-ranking the item's whole history is what
    makes it exact without tombstones: a re-sent older event arriving after a deletion finds the
    deletion in the history and loses to it. The cost is a read of the touched items' events (on
    BigQuery a scan of the landing table's key columns per build); a full refresh re-ranks everything. -#}
{% macro stream_current(stream) %}
{%- set spec = ch_dbt.stream_catalogue()[stream] %}
{%- set landing = source('streams', spec.table) %}
{#- A stream not landed yet (its landing table does not exist: a new warehouse, a stream turned on
    later) builds an empty model instead of failing the whole `dbt build` of the project. -#}
{%- set landed = not execute or adapter.get_relation(database=landing.database, schema=landing.schema, identifier=landing.identifier) is not none %}
with events as (
    {%- if not landed %}
    select
        cast(null as {{ dbt.type_string() }}) as company_number,
        cast(null as {{ dbt.type_string() }}) as item_id,
        cast(null as {{ dbt.type_string() }}) as item_key,
        cast(null as {{ dbt.type_string() }}) as resource_kind,
        cast(null as {{ dbt.type_string() }}) as resource_uri,
        cast(null as {{ dbt.type_string() }}) as resource_id,
        cast(null as {{ dbt.type_string() }}) as event_type,
        {%- for column, type in spec.fields %}
        cast(null as {{ dbt.type_string() }}) as {{ adapter.quote(column) }},
        {%- endfor %}
        cast(null as {{ ch_dbt.type_instant() }}) as published_at,
        cast(null as {{ ch_dbt.type_instant() }}) as order_time,
        cast(null as {{ dbt.type_bigint() }}) as timepoint,
        cast(null as {{ dbt.type_int() }}) as kafka_partition,
        cast(null as {{ dbt.type_bigint() }}) as kafka_offset,
        cast(null as {{ ch_dbt.type_instant() }}) as ingested_at
    limit 0
    {%- else %}
    select
        company_number,
        item_id,
        {{ ch_dbt.stream_item_key(spec) }} as item_key,
        resource_kind,
        resource_uri,
        resource_id,
        coalesce(event_type, 'changed') as event_type,
        {%- for column, type in spec.fields %}
        {{ adapter.quote(column) }},
        {%- endfor %}
        published_at,
        {{ ch_dbt.event_order_time('published_at', 'kafka_timestamp', 'ingested_at') }} as order_time,
        timepoint,
        kafka_partition,
        kafka_offset,
        ingested_at
    from {{ landing }}
    where item_id is not null
    {%- endif %}
),
{%- if is_incremental() %}

touched as (
    select distinct events.item_key
    from events
    cross join (select max(last_ingested_at) as seen from {{ this }}) as held
    where held.seen is null
       or events.ingested_at >= {{ ch_dbt.hours_before('held.seen', var('stream_reprocess_hours', 24)) }}
),

newest as (
    {{ ch_dbt.newest_event_per(['item_key'], '(select events.* from events join touched on touched.item_key = events.item_key) as history') }}
)

select
    case when event_type = 'deleted' then 'delete' else 'upsert' end as merge_action,
    {{ ch_dbt.stream_current_columns(spec) }}
from newest
{%- else %}

newest as (
    {{ ch_dbt.newest_event_per(['item_key'], 'events') }}
)

select
    {{ ch_dbt.stream_current_columns(spec) }}
from newest
where event_type = 'changed'
{%- endif %}
{% endmacro %}

{% macro stream_current_columns(spec) -%}
company_number,
    item_id,
    item_key,
    resource_kind,
    resource_uri,
    resource_id,
    {%- for column, type in spec.fields %}
    {{ ch_dbt.stream_field_typed(column, type) }},
    {%- endfor %}
    published_at as last_published_at,
    order_time as last_order_time,
    timepoint as last_timepoint,
    kafka_partition as last_kafka_partition,
    kafka_offset as last_kafka_offset,
    ingested_at as last_ingested_at
{%- endmacro %}
