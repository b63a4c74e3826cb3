-- no-transaction
-- The due rows of each channel in due order (issue 11, the claim loop per VA Notify lane). While one lane's
-- breaker is open, the claim for the other lanes must not step over the shut lane's backlog: with 100,000
-- pushes waiting at the front of the old `notifications_due (next_attempt_at)`, an email/SMS claim read every
-- one of them (~20 ms instead of ~0.2 ms, bench/README.md). Keyed by channel first, each admitted channel is one
-- short ordered scan. Same partial predicate as before (lifecycle::PENDING, spelled literally so the planner
-- proves it). Built concurrently (hence no transaction, one statement per file) so a deployment on a large table
-- does not block accepts while it scans; the old index goes in the next migration.
create index concurrently if not exists notifications_due_by_channel on notifications (channel, next_attempt_at)
    where status in ('queued', 'retry_wait', 'sending');
