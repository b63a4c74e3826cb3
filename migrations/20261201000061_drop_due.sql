-- no-transaction
-- `notifications_due_by_channel` (the previous migration) serves every claim and the queue gauges; two partial
-- indexes on the pending rows would cost every status change twice, and with both the planner may pick the old
-- one and filter by channel (the slow path it replaces). Dropped concurrently, as it was built.
drop index concurrently if exists notifications_due;
