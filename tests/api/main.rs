//! Integration tests: the real application over HTTP, a real PostgreSQL, local upstream fakes.

mod callbacks;
mod clicks;
mod contacts_client;
mod crash;
mod delivery;
mod helpers;
mod metrics;
mod notify_client;
mod operations;
mod report;
mod send_email;
