-- Pending rows by state, through the partial index (the literal list is lifecycle::PENDING).
select status as "status!", count(*) as "count!" from notifications
where status in ('queued', 'retry_wait', 'sending')
group by status
