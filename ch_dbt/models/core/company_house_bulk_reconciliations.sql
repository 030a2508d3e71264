{{ config(materialized='incremental', incremental_strategy='merge', unique_key='file_date') }}
{#- One row per bulk file the core has been reconciled with (macros/bulk_file.sql). Built after the
    core, from the decision the core's build made: if the core fails, dbt skips this model and the
    next build reconciles again (which changes nothing twice). -#}
-- depends_on: {{ ref('company_house_core') }}
{%- set files = ch_dbt.bulk_files() %}
{%- set reconciled = files.pending if is_incremental() else files.loaded %}

select
    {% if reconciled %}date '{{ reconciled }}'{% else %}cast(null as date){% endif %} as file_date,
    current_timestamp as reconciled_at
{%- if not reconciled %}
where false
{%- endif %}
