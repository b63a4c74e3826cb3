//! Integration tests: the real application over HTTP, a real PostgreSQL, local upstream fakes.

mod helpers;
mod operations;
mod send_email;
