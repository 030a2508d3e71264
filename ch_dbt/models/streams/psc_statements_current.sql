-- The current PSC statements of the /persons-with-significant-control-statements stream (macros/streams.sql; config: dbt_project.yml).
{{ ch_dbt.stream_current('psc_statements') }}
