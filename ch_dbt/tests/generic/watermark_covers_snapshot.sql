{#- After a run the watermark must cover everything the snapshot read, or those rows would be read
    again forever; a partition whose watermark is below the snapshot's read position fails. -#}
{% test watermark_covers_snapshot(model) %}
select snapshot.kafka_partition
from {{ ref('snapshot_streamed_data') }} as snapshot
left join {{ model }} as watermark on watermark.kafka_partition = snapshot.kafka_partition
group by snapshot.kafka_partition
having max(snapshot.scanned_offset) > coalesce(max(watermark.last_offset), -1)
{% endtest %}
