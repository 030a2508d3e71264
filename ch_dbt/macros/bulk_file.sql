{#- The monthly bulk file in the core (README "Monthly bulk refresh", docs/architecture.md §6).

    A file dated D (BasicCompanyDataAsOneFile-D) is the register as at 00:00 UTC on D. The core takes it
    as one fact per company at that instant, ordered against stream events by macros/event_order.sql
    (below any event of the same second):
    - a company the file lists takes the file's row, unless the core holds a newer event;
    - a company the file lacks, that the core holds with a live status and older than D, has left the
      register (deleted, or dissolved while the stream was not followed: the file cannot tell): the
      core drops it. One it holds as closed (closed_statuses) stays: the file drops companies dissolved
      long ago, so their absence says nothing new;
    - afterwards, an event older than the newest file is applied only if it closes the company (a
      live one would contradict the file, which lists every live company).
    Which file the core has taken is recorded by company_house_bulk_reconciliations; a newer file in
    the bulk table makes the next build reconcile (one full comparison a month; other builds read no
    bulk row). Reconciling twice changes nothing. -#}

{% macro closed_statuses() %}('dissolved', 'converted-closed', 'removed', 'closed'){% endmacro %}

{#- The instant of a file's date (a DATE expression): 00:00 UTC that day. -#}
{% macro file_instant(date_expression) %}{{ return(adapter.dispatch('file_instant', 'ch_dbt')(date_expression)) }}{% endmacro %}
{% macro default__file_instant(date_expression) %}timezone('UTC', cast({{ date_expression }} as timestamp)){% endmacro %}
{% macro bigquery__file_instant(date_expression) %}timestamp({{ date_expression }}){% endmacro %}

{#- A dbt unit test of a model: its inputs are fixtures, the warehouse's tables are not read (the bulk
    file's rules are tested on real builds, ch_pipeline_tests/dbt/test_bulk_months.py). -#}
{% macro in_unit_test() %}{{ return(model is defined and model.resource_type == 'unit_test') }}{% endmacro %}

{#- One value of a query run at compile time (none when it returns no row or NULL). -#}
{% macro scalar(sql) %}
    {% set result = run_query(sql) %}
    {{ return(result.columns[0].values()[0] if result and result.rows | length > 0 else none) }}
{% endmacro %}

{#- The date of the file in the bulk table (none: no table, no row, or a table loaded before files
    were dated, whose rows are an undated baseline older than any event). -#}
{% macro loaded_file_date() %}
    {% if not execute or ch_dbt.in_unit_test() %}{{ return(none) }}{% endif %}
    {% set bulk = source('warehouse', 'company_house_bulk') %}
    {% set relation = adapter.get_relation(database=bulk.database, schema=bulk.schema, identifier=bulk.identifier) %}
    {% if relation is none %}{{ return(none) }}{% endif %}
    {% set columns = adapter.get_columns_in_relation(relation) | map(attribute='name') | map('lower') | list %}
    {% if 'file_date' not in columns %}{{ return(none) }}{% endif %}
    {{ return(ch_dbt.scalar('select max(file_date) from ' ~ relation)) }}
{% endmacro %}

{#- The newest file the core has been reconciled with (read without ref(): the record is built after
    the core, from the same decision). -#}
{% macro reconciled_file_date() %}
    {% if not execute or ch_dbt.in_unit_test() %}{{ return(none) }}{% endif %}
    {% set record = adapter.get_relation(database=this.database, schema=this.schema, identifier='company_house_bulk_reconciliations') %}
    {% if record is none %}{{ return(none) }}{% endif %}
    {{ return(ch_dbt.scalar('select max(file_date) from ' ~ record)) }}
{% endmacro %}

{#- What one build knows of the bulk files, each read once: `loaded` (the file in the bulk table),
    `reconciled` (the newest the core has taken), `pending` (the loaded file when newer than the
    reconciled one: this build reconciles the core with it), `newest` (the newer of the two). Dates as
    'YYYY-MM-DD' strings, none when unknown. -#}
{% macro bulk_files() %}
    {% set loaded = ch_dbt.loaded_file_date() %}
    {% set reconciled = ch_dbt.reconciled_file_date() %}
    {% set loaded = loaded | string if loaded is not none else none %}
    {% set reconciled = reconciled | string if reconciled is not none else none %}
    {% set pending = loaded if loaded is not none and (reconciled is none or loaded > reconciled) else none %}
    {% set known = [loaded, reconciled] | reject('none') | list %}
    {{ return({'loaded': loaded, 'reconciled': reconciled, 'pending': pending, 'newest': known | max if known else none}) }}
{% endmacro %}

{#- An event older than the newest file that would make a company live: the file contradicts it. -#}
{% macro contradicted_by_file(event_alias, file_date) -%}
{%- if file_date is none -%}false{%- else -%}
({{ event_alias }}.kafka_offset is not null
 and {{ event_alias }}.order_time < {{ ch_dbt.file_instant("date '" ~ file_date ~ "'") }}
 and coalesce({{ event_alias }}.company_status, '') not in {{ ch_dbt.closed_statuses() }})
{%- endif -%}
{%- endmacro %}

{#- The bulk table's rows as facts (the columns of a stream event): `changed` at the file's instant, no
    timepoint or Kafka coordinates. A table loaded before files were dated (`loaded` none, bulk_files)
    has no instant (NULL: an undated baseline, older than every event). -#}
{% macro file_facts(bulk, loaded) %}
    {%- set dated = loaded is not none %}
select
    company_name, company_number, company_status, date_of_creation, postal_code,
    cast(null as {{ dbt.type_timestamp() }}) as published_at,
    'changed' as event_type,
    {% if dated %}{{ ch_dbt.file_instant('file_date') }}{% else %}cast(null as {{ dbt.type_timestamp() }}){% endif %} as order_time,
    cast(null as {{ dbt.type_bigint() }}) as timepoint,
    cast(null as {{ dbt.type_int() }}) as kafka_partition,
    cast(null as {{ dbt.type_bigint() }}) as kafka_offset
from {{ bulk }}
{%- endmacro %}

{#- Each company's newest fact among the rows of `relation` (facts: stream events and file rows). -#}
{% macro newest_fact_per_company(relation) %}
{{ ch_dbt.newest_event_per(['company_number'], relation, 'fact_rank') }}
{% endmacro %}
