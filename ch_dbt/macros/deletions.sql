{#- post_hook of company_house_core: remove companies whose deletion (in this snapshot) is newer
    than the row held. The merge itself can only upsert; a delete needs its own statement. -#}
{% macro remove_deleted_companies() %}
delete from {{ this }}
where company_number in (
    select d.company_number
    from {{ ref('company_house_deletions') }} as d
    join {{ ref('snapshot_streamed_data') }} as s
      on s.company_number = d.company_number and s.event_type = 'deleted'
    join {{ this }} as c
      on c.company_number = d.company_number
    where {{ ch_dbt.event_is_newer('d.deleted_published_at', 'd.deleted_kafka_offset', 'c.last_published_at', 'c.last_kafka_offset') }}
)
{% endmacro %}
