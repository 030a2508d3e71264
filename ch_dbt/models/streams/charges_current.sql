-- The current charges of the /charges stream (macros/streams.sql; config: dbt_project.yml).
{{ ch_dbt.stream_current('charges') }}
