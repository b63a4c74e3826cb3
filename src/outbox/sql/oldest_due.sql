-- Age of the oldest due row, through the partial index (the literal list is lifecycle::PENDING).
select extract(epoch from now() - min(next_attempt_at))::float8 from notifications
where status in ('queued', 'retry_wait', 'sending') and next_attempt_at <= now()
