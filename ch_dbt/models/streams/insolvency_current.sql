-- The current insolvency record of a company (its cases inside)s of the /insolvency-cases stream (macros/streams.sql; config: dbt_project.yml).
{{ ch_dbt.stream_current('insolvency') }}
