{{ config(materialized='table', cluster_by=['company_number']) }}
{#- Per company of the core: what the other streams say about it now (issue 15). A table rebuilt from
    the current-state models on each build (a join of aggregates: no order to keep, nothing to merge). -#}
with officers as (
    select company_number, count(*) as current_officers
    from {{ ref('officers_current') }}
    where resigned_on is null
    group by company_number
),

pscs as (
    select company_number, count(*) as active_pscs
    from {{ ref('pscs_current') }}
    where ceased_on is null
    group by company_number
),

charges as (
    select company_number, count(*) as outstanding_charges
    from {{ ref('charges_current') }}
    where status in ('outstanding', 'part-satisfied')
    group by company_number
),

filings as (
    select company_number, {{ adapter.quote('date') }} as latest_filing_date, {{ adapter.quote('type') }} as latest_filing_type
    from (
        select
            *,
            row_number() over (
                partition by company_number order by {{ adapter.quote('date') }} desc nulls last, item_id desc
            ) as filing_rank
        from {{ ref('filings_current') }}
    ) as ranked
    where filing_rank = 1
)

select
    core.company_number,
    core.company_name,
    core.company_status,
    coalesce(officers.current_officers, 0) as current_officers,
    coalesce(pscs.active_pscs, 0) as active_pscs,
    coalesce(charges.outstanding_charges, 0) as outstanding_charges,
    insolvency.status as insolvency_status,
    coalesce({{ ch_dbt.json_array_length('insolvency.case_types') }}, 0) as insolvency_cases,
    filings.latest_filing_date,
    filings.latest_filing_type
from {{ ref('company_house_core') }} as core
left join officers on officers.company_number = core.company_number
left join pscs on pscs.company_number = core.company_number
left join charges on charges.company_number = core.company_number
left join {{ ref('insolvency_current') }} as insolvency on insolvency.company_number = core.company_number
left join filings on filings.company_number = core.company_number
