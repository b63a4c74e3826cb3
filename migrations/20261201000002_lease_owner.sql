-- Who holds a `sending` row's lease: a worker process's id, which that process also holds as a
-- session-level advisory lock (pg_advisory_lock(1162037505, owner)). When the process dies, its
-- connection closes and the lock is released; claimers then take its rows at once instead of
-- waiting for the lease to expire. Null for rows leased without an owner lock (lease expiry only).
alter table notifications add column lease_owner integer;

-- Only rows being delivered now: a few per replica, however large the table.
create index notifications_leased on notifications (lease_owner) where status = 'sending';
