//! Integration tests: the real application over HTTP, a real PostgreSQL, local upstream fakes.

mod admin;
mod architecture;
mod breaker;
mod callbacks;
mod cli_output;
mod clicks;
mod console;
mod contacts_client;
mod crash;
mod datadog;
mod delivery;
mod flipper_api;
mod fuzz;
mod helpers;
mod history;
mod hostile_input;
mod metrics;
mod notify_client;
mod openapi_clients;
mod operations;
mod outage;
mod reconcile;
mod report;
mod rollout;
mod send_email;
mod startup;
