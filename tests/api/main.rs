//! Integration tests: the real application over HTTP, a real PostgreSQL, local upstream fakes.

mod contacts_client;
mod crash;
mod delivery;
mod helpers;
mod notify_client;
mod operations;
mod send_email;
