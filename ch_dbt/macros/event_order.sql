{#- Events of one company are ordered by (published_at, kafka_offset); a NULL published_at sorts first.
    Offsets compare within a company because the Kafka key is company_number: one company, one partition.
    A row without an event (the bulk baseline) has NULL published_at and NULL offset: every event is newer. -#}

{% macro event_order_time(published_at) %}coalesce({{ published_at }}, {{ ch_dbt.earliest_timestamp() }}){% endmacro %}

{% macro event_is_newer(new_published_at, new_offset, old_published_at, old_offset) %}
(
    {{ ch_dbt.event_order_time(new_published_at) }} > {{ ch_dbt.event_order_time(old_published_at) }}
    or (
        {{ ch_dbt.event_order_time(new_published_at) }} = {{ ch_dbt.event_order_time(old_published_at) }}
        and {{ new_offset }} > coalesce({{ old_offset }}, -1)
    )
)
{% endmacro %}

{#- The latest company-profile event per company among the rows of `relation_sql`.
    Flat tutorial records carry no resource_kind/event_type: they are company-profile `changed` events. -#}
{% macro latest_event_per_company(relation_sql) %}
select
    company_name, company_number, company_status, date_of_creation, postal_code,
    published_at, event_type, kafka_partition, kafka_offset
from (
    select
        company_name,
        company_number,
        company_status,
        date_of_creation,
        postal_code,
        published_at,
        coalesce(event_type, 'changed') as event_type,
        kafka_partition,
        kafka_offset,
        row_number() over (
            partition by company_number
            order by {{ ch_dbt.event_order_time('published_at') }} desc, kafka_offset desc
        ) as event_rank
    from {{ relation_sql }}
    where coalesce(resource_kind, 'company-profile') = 'company-profile'
      and company_number is not null
) as ranked
where event_rank = 1
{% endmacro %}
