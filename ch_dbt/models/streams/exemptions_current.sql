-- The current exemptions record of each company (the /company-exemptions stream; macros/streams.sql, config: dbt_project.yml).
{{ ch_dbt.stream_current('exemptions') }}
