-- The current insolvency record of each company, its cases inside (the /insolvency-cases stream; macros/streams.sql, config: dbt_project.yml).
{{ ch_dbt.stream_current('insolvency') }}
