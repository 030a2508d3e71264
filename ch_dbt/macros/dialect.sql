{#- The only places where DuckDB and BigQuery SQL differ (adapter.dispatch picks the adapter's macro). -#}

{#- The earliest instant: where a NULL published_at (bad input) sorts in event order. -#}
{% macro earliest_timestamp() %}{{ return(adapter.dispatch('earliest_timestamp', 'ch_dbt')()) }}{% endmacro %}
{% macro default__earliest_timestamp() %}cast('0001-01-01 00:00:00+00' as timestamptz){% endmacro %}
{% macro bigquery__earliest_timestamp() %}timestamp('0001-01-01 00:00:00+00'){% endmacro %}

{#- First day of the month of a DATE, as a DATE (DuckDB's date_trunc returns a TIMESTAMP). -#}
{% macro month_start(date_expression) %}{{ return(adapter.dispatch('month_start', 'ch_dbt')(date_expression)) }}{% endmacro %}
{% macro default__month_start(date_expression) %}cast(date_trunc('month', {{ date_expression }}) as date){% endmacro %}
{% macro bigquery__month_start(date_expression) %}date_trunc({{ date_expression }}, month){% endmacro %}

{#- The larger of two values, ignoring a NULL one (BigQuery's GREATEST returns NULL if any is NULL,
    DuckDB's ignores NULLs: coalescing first gives both the same meaning). -#}
{% macro greatest_non_null(a, b) %}greatest(coalesce({{ a }}, {{ b }}), coalesce({{ b }}, {{ a }})){% endmacro %}

{#- A timestamp truncated to the whole second (published_at has one-second resolution in the API). -#}
{% macro truncate_to_second(timestamp_expression) %}{{ return(adapter.dispatch('truncate_to_second', 'ch_dbt')(timestamp_expression)) }}{% endmacro %}
{% macro default__truncate_to_second(timestamp_expression) %}date_trunc('second', {{ timestamp_expression }}){% endmacro %}
{% macro bigquery__truncate_to_second(timestamp_expression) %}timestamp_trunc({{ timestamp_expression }}, second){% endmacro %}

{#- Every column of a query but some: `select {{ star_except(['a']) }} from (...)`. -#}
{% macro star_except(columns) %}{{ return(adapter.dispatch('star_except', 'ch_dbt')(columns)) }}{% endmacro %}
{% macro default__star_except(columns) %}* exclude ({{ columns | join(', ') }}){% endmacro %}
{% macro bigquery__star_except(columns) %}* except ({{ columns | join(', ') }}){% endmacro %}

{#- A cast that yields NULL instead of failing on a malformed value (a stream's text field). -#}
{% macro safe_cast(expression, type) %}{{ return(adapter.dispatch('safe_cast', 'ch_dbt')(expression, type)) }}{% endmacro %}
{% macro default__safe_cast(expression, type) %}try_cast({{ expression }} as {{ type }}){% endmacro %}
{% macro bigquery__safe_cast(expression, type) %}safe_cast({{ expression }} as {{ type }}){% endmacro %}

{#- The number of elements of a JSON array held as text (NULL text: NULL). -#}
{% macro json_array_length(text_expression) %}{{ return(adapter.dispatch('json_array_length', 'ch_dbt')(text_expression)) }}{% endmacro %}
{% macro default__json_array_length(text_expression) %}cast(json_array_length({{ text_expression }}) as bigint){% endmacro %}
{% macro bigquery__json_array_length(text_expression) %}array_length(json_extract_array({{ text_expression }})){% endmacro %}

{#- A timestamp some hours earlier. -#}
{% macro hours_before(timestamp_expression, hours) %}{{ return(adapter.dispatch('hours_before', 'ch_dbt')(timestamp_expression, hours)) }}{% endmacro %}
{% macro default__hours_before(timestamp_expression, hours) %}({{ timestamp_expression }} - interval ({{ hours }}) hour){% endmacro %}
{% macro bigquery__hours_before(timestamp_expression, hours) %}timestamp_sub({{ timestamp_expression }}, interval {{ hours }} hour){% endmacro %}

{#- The type of an absolute instant (the landing tables' TIMESTAMPTZ on DuckDB, TIMESTAMP on BigQuery). -#}
{% macro type_instant() %}{{ return(adapter.dispatch('type_instant', 'ch_dbt')()) }}{% endmacro %}
{% macro default__type_instant() %}timestamptz{% endmacro %}
{% macro bigquery__type_instant() %}timestamp{% endmacro %}
