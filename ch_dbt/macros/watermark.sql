{#- The watermark table as of the start of this dbt invocation, read WITHOUT ref(): the snapshot
    reads the watermark that is computed from the snapshot, and a ref() would make that a cycle in
    the dbt DAG and in the Dagster asset graph. Returns none before the first watermark exists. -#}
{% macro previous_watermark() %}
    {% if not execute %}{{ return(none) }}{% endif %}
    {{ return(adapter.get_relation(database=this.database, schema=this.schema, identifier='get_last_timestamp')) }}
{% endmacro %}

{#- Whether this invocation builds company_house_core from scratch: it is selected and will take its
    first-build branch (no table yet, or a full refresh of it, e.g. `dbt build --full-refresh`).
    That branch reads the whole stream table, so the snapshot must read all of it too: the watermark
    is taken from what the snapshot read. Mirrors dbt's is_incremental() for the core, as seen
    before the core runs (the snapshot runs first); looked up in the graph, not with ref(), which
    would make a cycle. False when the core is not in this invocation's selection: the snapshot then
    keeps reading past the watermark, so the watermark never claims rows no core build read. -#}
{% macro core_is_built_from_scratch() %}
    {% if not execute %}{{ return(false) }}{% endif %}
    {% set core = graph.nodes.values() | selectattr('resource_type', 'equalto', 'model')
                  | selectattr('name', 'equalto', 'company_house_core') | first %}
    {% if not core or core.unique_id not in selected_resources %}{{ return(false) }}{% endif %}
    {% set full_refresh = core.config.full_refresh %}
    {% if full_refresh is none %}{% set full_refresh = flags.FULL_REFRESH %}{% endif %}
    {% set existing = adapter.get_relation(database=core.database, schema=core.schema, identifier=core.alias) %}
    {{ return(full_refresh or existing is none or existing.type != 'table') }}
{% endmacro %}
