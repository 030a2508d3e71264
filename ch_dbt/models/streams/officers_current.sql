-- The current appointments of the /officers stream (macros/streams.sql; config: dbt_project.yml).
{{ ch_dbt.stream_current('officers') }}
