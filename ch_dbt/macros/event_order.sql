{#- The order of two events of one company (README "Order of a company's events"; the Python ground
    truth is ch_pipeline/companies_house/events.py `event_order`). Newer is larger, compared in turn:

    1. order_time: published_at, but never later than the second the event reached Kafka (its Kafka
       timestamp, else the time it was landed), so an event published "in the future" counts as
       published when it arrived and cannot hold back the company's later events for ever. A NULL
       published_at (bad input) is the earliest instant. published_at comes first so that an older
       event the API re-sends with a new timepoint never reverts a newer change.
    2. timepoint: the stream's sequence (strictly increasing; all company-profile events come from one
       stream). NULL (the tutorial's flat records) sorts below every timepoint.
    3. Kafka coordinates: partition, then offset. Offsets order events only within one partition, and
       are reached only when order_time and timepoint tie: in practice the same event landed twice
       (the same data) or flat records of the same second. A company's events can sit in two
       partitions once the topic grows partitions, which is why the timepoint comes first.

    The models store the deciding fields with the event a row holds (core: last_order_time,
    last_timepoint, last_kafka_partition, last_kafka_offset; tombstones: deleted_*). A row written
    before they existed (the columns are appended as NULL by on_schema_change) has no partition: it is
    compared as before, by published_at then offset, until a newer event or a full refresh replaces it. -#}

{#- The order time of a stream row (all three arguments are columns of company_house_stream). -#}
{% macro event_order_time(published_at, kafka_timestamp, ingested_at) -%}
least(coalesce({{ published_at }}, {{ ch_dbt.earliest_timestamp() }}),
      {{ ch_dbt.truncate_to_second('coalesce(' ~ kafka_timestamp ~ ', ' ~ ingested_at ~ ')') }})
{%- endmacro %}

{#- ORDER BY list, newest first, over rows carrying order_time, timepoint, kafka_partition, kafka_offset
    (a bulk file's row has no timepoint nor Kafka coordinates: below any event of its second). -#}
{% macro event_order_desc() -%}
order_time desc, coalesce(timepoint, -1) desc, coalesce(kafka_partition, -1) desc, coalesce(kafka_offset, -1) desc
{%- endmacro %}

{#- An event as the snapshot (or any relation with the order columns) carries it. -#}
{% macro stream_event(alias) %}
    {{ return({'order_time': alias ~ '.order_time', 'timepoint': alias ~ '.timepoint',
               'partition': alias ~ '.kafka_partition', 'offset': alias ~ '.kafka_offset'}) }}
{% endmacro %}

{#- The event a stored row holds, its columns named <prefix>order_time, ... (core: 'last_', tombstones:
    'deleted_'). `relation` is the table behind `alias`: a column it does not have yet (a table from
    before the column existed; this build's on_schema_change appends it after the query is compiled)
    reads as NULL. In a dbt unit test `relation` is a fixture (a CTE; `this` a plain name), which has
    every column. -#}
{% macro stored_event(alias, prefix, relation) %}
    {% set present = [] %}
    {% set introspect = execute and relation is not string and not relation.is_cte %}
    {% if introspect %}
        {% for column in adapter.get_columns_in_relation(relation) %}{% do present.append(column.name | lower) %}{% endfor %}
    {% endif %}
    {% set event = {} %}
    {% for key, column, type in [('published_at', 'published_at', dbt.type_timestamp()),
                                 ('order_time', 'order_time', dbt.type_timestamp()),
                                 ('timepoint', 'timepoint', dbt.type_bigint()),
                                 ('partition', 'kafka_partition', dbt.type_int()),
                                 ('offset', 'kafka_offset', dbt.type_bigint())] %}
        {% if not introspect or (prefix ~ column) in present %}
            {% do event.update({key: alias ~ '.' ~ prefix ~ column}) %}
        {% else %}
            {% do event.update({key: 'cast(null as ' ~ type ~ ')'}) %}
        {% endif %}
    {% endfor %}
    {{ return(event) }}
{% endmacro %}

{#- Whether event `new` (a stream_event, or a bulk file's fact) is newer than event `old` (a stored_event).
    A stored row without Kafka coordinates holds a bulk file's row: at its file's instant (order_time),
    below any event of that second; without order_time either, an undated baseline older than all. -#}
{% macro event_is_newer(new, old) %}
{%- set old_time = 'coalesce(' ~ old.order_time ~ ', ' ~ old.published_at ~ ', ' ~ ch_dbt.earliest_timestamp() ~ ')' -%}
{%- set new_timepoint = 'coalesce(' ~ new.timepoint ~ ', -1)' -%}
{%- set old_timepoint = 'coalesce(' ~ old.timepoint ~ ', -1)' -%}
(
    ({{ old.offset }} is null and {{ old.order_time }} is null)
    or {{ new.order_time }} > {{ old_time }}
    or ({{ new.order_time }} = {{ old_time }} and (
        -- A file's row: any event of the same second is newer.
        ({{ old.offset }} is null and {{ new.offset }} is not null)
        -- A row stored before the order columns existed: compared as it was then (offset).
        or ({{ old.partition }} is null and {{ new.offset }} > {{ old.offset }})
        or ({{ old.partition }} is not null and (
            {{ new_timepoint }} > {{ old_timepoint }}
            or ({{ new_timepoint }} = {{ old_timepoint }} and (
                {{ new.partition }} > {{ old.partition }}
                or ({{ new.partition }} = {{ old.partition }} and {{ new.offset }} > {{ old.offset }})
            ))
        ))
    ))
)
{% endmacro %}

{#- The newest event per key among the rows of `relation_sql` (a relation, or a subquery with its alias),
    which carry order_time, timepoint, kafka_partition, kafka_offset: every column of it plus the rank
    column (1). The one place the order rule ranks events: the core (per company) and every stream's
    current-state model (per item, macros/streams.sql) call it. -#}
{% macro newest_event_per(key_columns, relation_sql, rank_column='event_rank') %}
select * from (
    select *, row_number() over (partition by {{ key_columns | join(', ') }} order by {{ ch_dbt.event_order_desc() }}) as {{ rank_column }}
    from {{ relation_sql }}
) as ranked
where {{ rank_column }} = 1
{% endmacro %}

{#- The latest company-profile event per company among the rows of `relation_sql` (stream rows).
    Flat tutorial records carry no resource_kind/event_type: they are company-profile `changed` events. -#}
{% macro latest_event_per_company(relation_sql) %}
select
    company_name, company_number, company_status, date_of_creation, postal_code,
    published_at, event_type, order_time, timepoint, kafka_partition, kafka_offset
from (
    {%- set events %}(
        select
            company_name,
            company_number,
            company_status,
            date_of_creation,
            postal_code,
            published_at,
            coalesce(event_type, 'changed') as event_type,
            {{ ch_dbt.event_order_time('published_at', 'kafka_timestamp', 'ingested_at') }} as order_time,
            timepoint,
            kafka_partition,
            kafka_offset
        from {{ relation_sql }}
        where coalesce(resource_kind, 'company-profile') = 'company-profile'
          and company_number is not null
    ) as events{% endset %}
    {{ ch_dbt.newest_event_per(['company_number'], events) }}
) as latest
{% endmacro %}
