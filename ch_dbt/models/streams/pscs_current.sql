-- The current persons with significant control (the /persons-with-significant-control stream; macros/streams.sql, config: dbt_project.yml).
{{ ch_dbt.stream_current('pscs') }}
