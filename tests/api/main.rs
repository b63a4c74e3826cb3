//! Integration tests: the real application over HTTP, a real PostgreSQL, local upstream fakes.

mod admin;
mod breaker;
mod callbacks;
mod clicks;
mod contacts_client;
mod crash;
mod delivery;
mod flipper_api;
mod helpers;
mod metrics;
mod notify_client;
mod operations;
mod outage;
mod reconcile;
mod report;
mod rollout;
mod send_email;
