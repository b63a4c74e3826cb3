//! Integration tests: the real application over HTTP, a real PostgreSQL, local upstream fakes.

mod admin;
mod contacts_client;
mod crash;
mod delivery;
mod flipper_api;
mod helpers;
mod notify_client;
mod operations;
mod send_email;
