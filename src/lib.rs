//! ebg-notify: the notification gateway behind the Event Bus Gateway's `send_email` call.
//!
//! Request path: [`http`] (routes) -> [`auth`] -> [`toggles`] -> [`outbox`] (durable queue).
//! Delivery path: [`outbox::worker`] -> [`contacts`] -> [`notify`] (VA Notify).
//! Tracking: [`callbacks`] (delivery status, resends), [`clicks`]; [`report`] (rollout report), [`retention`].
//! Release: [`rollout`] (guarded rollout plans and their evaluator; the `simulate` demo is in [`cli`]).
//! Operators: [`console`] (server-rendered web pages over the same write paths as the admin API).
//! Startup: [`config`] -> [`app::Application`]; the binary's verbs live in [`cli`].

pub mod app;
pub mod auth;
pub mod callbacks;
pub mod cli;
pub mod clicks;
pub mod config;
pub mod console;
pub mod contacts;
pub mod db;
pub mod error;
pub mod http;
pub mod input;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod outbox;
pub mod progress;
pub mod report;
pub mod retention;
pub mod rollout;
pub mod state;
pub mod telemetry;
pub mod toggles;
pub mod upstream;
