{#- MERGE that also deletes (docs/architecture.md §6: a `deleted` event removes the company).
    dbt's `merge` strategy only upserts; a separate DELETE statement would need a second DML (and
    the offline BigQuery emulator refuses DELETE statements), so on BigQuery the deletion rides in the
    MERGE: a model sets `merge_delete_when` (a condition on DBT_INTERNAL_SOURCE); matched rows meeting
    it are deleted, unmatched ones are not inserted. On DuckDB the same change is a DELETE of every
    source key, then an INSERT of the rows that are not deletions, in the build's one transaction:
    DuckDB's MERGE updates the rows in place, 9.3 s for 50k events into a 5M-row core against 0.2 s
    (docs/architecture.md §6). The source has one row per key (the models guarantee it, the unique
    tests check it), so both give the same table.
    Models without `merge_delete_when` get the adapter's own merge, unchanged. The control column
    merge_action is never a table column: the merge leaves it out, and so does on_schema_change. -#}

{% macro duckdb__get_merge_sql(target, source, unique_key, dest_columns, incremental_predicates=none) -%}
    {%- if config.get('merge_delete_when') -%}
        {{ return(ch_dbt.replace_with_deletes_sql(target, source, unique_key, dest_columns, config.get('merge_delete_when'))) }}
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
    {%- set columns = ch_dbt.merged_columns(dest_columns) -%}
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

{% macro replace_with_deletes_sql(target, source, unique_key, dest_columns, delete_when) -%}
    {%- set columns = ch_dbt.merged_columns(dest_columns) -%}
delete from {{ target }}
where {{ unique_key }} in (select {{ unique_key }} from {{ source }});
insert into {{ target }} ({{ columns | join(', ') }})
select {{ columns | join(', ') }}
from {{ source }} as DBT_INTERNAL_SOURCE
where not ({{ delete_when }})
{%- endmacro %}

{#- The table's columns a merge writes, quoted: the source's, without the control columns. -#}
{% macro merged_columns(dest_columns) %}
    {{ return(dest_columns | rejectattr('name', 'in', ch_dbt.merge_control_columns()) | map(attribute='quoted') | list) }}
{% endmacro %}

{#- The columns of a merge source that steer the MERGE and are not columns of the table. -#}
{% macro merge_control_columns() %}{{ return(['merge_action'] if config.get('merge_delete_when') else []) }}{% endmacro %}

{#- on_schema_change (append_new_columns) compares the model's query with the table: a model with
    `merge_delete_when` carries merge_action in its query, which must not be appended to the table nor
    merged into it. Both adapters' checks run unchanged, then forget the control columns. -#}
{% macro duckdb__check_for_schema_changes(source_relation, target_relation) %}
    {{ return(ch_dbt.without_merge_control_columns(dbt.default__check_for_schema_changes(source_relation, target_relation))) }}
{% endmacro %}

{% macro bigquery__check_for_schema_changes(source_relation, target_relation) %}
    {{ return(ch_dbt.without_merge_control_columns(dbt.bigquery__check_for_schema_changes(source_relation, target_relation))) }}
{% endmacro %}

{% macro without_merge_control_columns(changes) %}
    {%- set control = ch_dbt.merge_control_columns() -%}
    {%- if not control -%}{{ return(changes) }}{%- endif -%}
    {%- set source_not_in_target = changes['source_not_in_target'] | rejectattr('name', 'in', control) | list -%}
    {%- do changes.update({
        'source_not_in_target': source_not_in_target,
        'source_columns': changes['source_columns'] | rejectattr('name', 'in', control) | list,
        'schema_changed': (source_not_in_target | length > 0) or (changes['target_not_in_source'] | length > 0)
                          or (changes['new_target_types'] | length > 0),
    }) -%}
    {{ return(changes) }}
{% endmacro %}

{#- A model contract (company_house_core) lists the table's columns; the incremental query also carries
    the control columns. dbt checks the contract on every table it creates from the query, the
    incremental build's temporary table included: the check sees the query without the control
    columns, and on BigQuery (whose CREATE TABLE applies the contract's column list, which would drop
    them) the temporary table is created from the whole query, as without a contract. -#}
{% macro duckdb__get_assert_columns_equivalent(sql) %}
    {{ return(dbt.default__get_assert_columns_equivalent(ch_dbt.without_merge_control_columns_sql(sql))) }}
{% endmacro %}

{% macro bigquery__get_assert_columns_equivalent(sql) %}
    {{ return(dbt.default__get_assert_columns_equivalent(ch_dbt.without_merge_control_columns_sql(sql))) }}
{% endmacro %}

{% macro without_merge_control_columns_sql(sql) %}
    {#- Only the incremental branch of a model selects the control columns. -#}
    {%- if not (ch_dbt.merge_control_columns() and is_incremental()) -%}{{ return(sql) }}{%- endif -%}
    {{ return('select ' ~ ch_dbt.star_except(ch_dbt.merge_control_columns()) ~ ' from (' ~ sql ~ ') as without_control_columns') }}
{% endmacro %}

{% macro bigquery__create_table_as(temporary, relation, compiled_code, language='sql') %}
    {%- if not (temporary and language == 'sql' and ch_dbt.merge_control_columns() and config.get('contract').enforced) -%}
        {{ return(dbt.bigquery__create_table_as(temporary, relation, compiled_code, language)) }}
    {%- endif -%}
    {{ get_assert_columns_equivalent(compiled_code) }}
    create or replace table {{ relation }}
    {{ cluster_by(config.get('cluster_by', none)) }}
    {{ bigquery_table_options(config, model, temporary) }}
    as (
      {{ compiled_code }}
    );
{% endmacro %}
