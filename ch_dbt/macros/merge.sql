{#- MERGE that also deletes (DESIGN §6: a `deleted` event removes the company).
    dbt's `merge` strategy only upserts; a separate DELETE statement would need a second DML (and
    the offline BigQuery emulator refuses DELETE statements), so the deletion rides in the MERGE:
    a model sets `merge_delete_when` (a condition on DBT_INTERNAL_SOURCE); matched rows meeting it
    are deleted, unmatched ones are not inserted. Same SQL on DuckDB (>= 1.4) and BigQuery.
    Models without `merge_delete_when` get the adapter's own merge, unchanged. -#}

{% macro duckdb__get_merge_sql(target, source, unique_key, dest_columns, incremental_predicates=none) -%}
    {%- if config.get('merge_delete_when') -%}
        {{ return(ch_dbt.merge_with_deletes_sql(target, source, unique_key, dest_columns, config.get('merge_delete_when'))) }}
    {%- endif -%}
    {{ return(dbt.duckdb__get_merge_sql(target, source, unique_key, dest_columns, incremental_predicates)) }}
{%- endmacro %}

{% macro bigquery__get_merge_sql(target, source, unique_key, dest_columns, incremental_predicates=none) -%}
    {%- if config.get('merge_delete_when') -%}
        {{ return(ch_dbt.merge_with_deletes_sql(target, source, unique_key, dest_columns, config.get('merge_delete_when'))) }}
    {%- endif -%}
    {{ return(dbt.default__get_merge_sql(target, source, unique_key, dest_columns, incremental_predicates)) }}
{%- endmacro %}

{% macro merge_with_deletes_sql(target, source, unique_key, dest_columns, delete_when) -%}
    {%- set columns = dest_columns | map(attribute='quoted') | list -%}
merge into {{ target }} as DBT_INTERNAL_DEST
using {{ source }} as DBT_INTERNAL_SOURCE
on DBT_INTERNAL_SOURCE.{{ unique_key }} = DBT_INTERNAL_DEST.{{ unique_key }}
when matched and ({{ delete_when }}) then delete
when matched then update set
    {%- for column in columns %}
    {{ column }} = DBT_INTERNAL_SOURCE.{{ column }}{{ "," if not loop.last }}
    {%- endfor %}
when not matched and not ({{ delete_when }}) then insert ({{ columns | join(', ') }})
    values ({% for column in columns %}DBT_INTERNAL_SOURCE.{{ column }}{{ ", " if not loop.last }}{% endfor %})
{%- endmacro %}
