-- The current person with significant controls of the /persons-with-significant-control stream (macros/streams.sql; config: dbt_project.yml).
{{ ch_dbt.stream_current('pscs') }}
