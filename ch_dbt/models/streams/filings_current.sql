-- The current filings of the /filings stream (macros/streams.sql; config: dbt_project.yml).
{{ ch_dbt.stream_current('filings') }}
