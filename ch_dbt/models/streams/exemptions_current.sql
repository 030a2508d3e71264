-- The current exemptions of a companys of the /company-exemptions stream (macros/streams.sql; config: dbt_project.yml).
{{ ch_dbt.stream_current('exemptions') }}
