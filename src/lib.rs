//! ebg-notify: the notification gateway behind the Event Bus Gateway's `send_email` call.
//!
//! Request path: [`http`] (routes) -> [`auth`] -> [`toggles`] -> [`outbox`] (durable queue).
//! Delivery path: [`outbox::worker`] -> [`contacts`] -> [`notify`] (VA Notify).

pub mod auth;
pub mod config;
pub mod contacts;
pub mod notify;
