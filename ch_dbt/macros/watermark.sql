{#- The watermark table as of the start of this dbt invocation, read WITHOUT ref(): the snapshot
    reads the watermark that is computed from the snapshot, and a ref() would make that a cycle in
    the dbt DAG and in the Dagster asset graph. Returns none before the first watermark exists. -#}
{% macro previous_watermark() %}
    {% if not execute %}{{ return(none) }}{% endif %}
    {{ return(adapter.get_relation(database=this.database, schema=this.schema, identifier='get_last_timestamp')) }}
{% endmacro %}
