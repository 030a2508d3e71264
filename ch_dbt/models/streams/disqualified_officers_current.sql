-- The current disqualified officers of the /disqualified-officers stream (macros/streams.sql; config: dbt_project.yml).
{{ ch_dbt.stream_current('disqualified_officers') }}
