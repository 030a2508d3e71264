{#- Fails for every row whose value went below the value it replaced (a watermark moving backwards). -#}
{% test never_decreases(model, column_name, previous_column) %}
select *
from {{ model }}
where {{ previous_column }} is not null
  and {{ column_name }} < {{ previous_column }}
{% endtest %}
