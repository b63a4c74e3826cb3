//! HTTP routes and the middleware stack shared by all of them.

pub mod admin;
mod callbacks;
mod clicks;
mod extract;
pub mod flipper_api;
mod health;
mod metrics_route;
mod notifications;
pub mod openapi;
mod report;
pub mod rollouts;
mod send_channels;
mod send_email;

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tower_http::LatencyUnit;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, OnResponse, TraceLayer};
use tracing::Level;

pub use extract::{AdminAudit, AdminAuth, AdminReadAuth, Params, ServiceAccountAuth};

use crate::error::{ChannelOutcomes, Outcome};
use crate::metrics as m;
use crate::outbox::{CHANNEL_EMAIL, CHANNEL_PUSH, CHANNEL_SMS};
use crate::state::AppState;

/// The paths EBG calls; each is also the suffix of the scope its token must carry.
pub const SEND_EMAIL_PATH: &str = "/v0/event_bus_gateway/send_email";
pub const SEND_SMS_PATH: &str = "/v0/event_bus_gateway/send_sms";
pub const SEND_PUSH_PATH: &str = "/v0/event_bus_gateway/send_push";
pub const SEND_NOTIFICATIONS_PATH: &str = "/v0/event_bus_gateway/send_notifications";

/// Builds the router with every route and layer.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.http.body_limit_bytes;
    let timeout = state.config.http.request_timeout();
    let console = if state.config.console.enabled { crate::console::routes() } else { Router::new() };
    Router::new()
        .merge(console)
        .route(SEND_EMAIL_PATH, post(send_email::send_email))
        .route(SEND_SMS_PATH, post(send_channels::send_sms))
        .route(SEND_PUSH_PATH, post(send_channels::send_push))
        .route(SEND_NOTIFICATIONS_PATH, post(send_channels::send_notifications))
        .route("/va_notify/callbacks", post(callbacks::receive))
        // `/c/{token}` and `/c/{token}/` carry an empty path; the wildcard needs at least one character.
        .route("/c/{token}", get(clicks::follow_bare))
        .route("/c/{token}/", get(clicks::follow_bare))
        .route("/c/{token}/{*path}", get(clicks::follow))
        .route("/admin/rollout/report", get(report::rollout_report))
        .route("/admin/notifications/{id}", get(notifications::show))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(metrics_route::render))
        .route("/openapi.json", get(openapi::document))
        .nest(flipper_api::MOUNT, flipper_api::routes())
        .merge(admin::routes())
        .merge(rollouts::routes())
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, timeout))
        // Outside the timeout, so a request it cuts off is still counted and timed as the client saw it.
        .layer(middleware::from_fn(count_requests))
        .layer(middleware::from_fn(observe_latency))
        .layer(CatchPanicLayer::new())
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().on_response(on_response).make_span_with(|req: &Request| {
            let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
            let request_id =
                req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            // The URI is not recorded: query strings may carry parameters, and paths under /c/ carry tokens.
            if is_probe(&route) {
                tracing::debug_span!("request", method = %req.method(), route, request_id)
            } else {
                tracing::info_span!("request", method = %req.method(), route, request_id)
            }
        }))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// Health probes arrive every few seconds from the orchestrator: logged at debug so they do not bury
/// the requests that matter.
fn is_probe(route: &str) -> bool {
    route.starts_with("/health/")
}

/// Logs a finished request at the level of its span: info, or debug for probes. (A probe's debug span is
/// disabled under an `info` filter and then has no metadata, which also means debug.)
fn on_response(response: &Response, latency: Duration, span: &tracing::Span) {
    let level = span.metadata().map_or(Level::DEBUG, |m| *m.level());
    DefaultOnResponse::new().level(level).latency_unit(LatencyUnit::Millis).on_response(response, latency, span);
}

/// Counts send_* requests by the outcome the handler or error attached; a request the timeout layer
/// cut off carries none and counts as `timeout`.
async fn count_requests(req: Request, next: Next) -> Response {
    // The route, and its channel: send_notifications names its channels in the request, so its answer
    // carries them (`ChannelOutcomes`); before they are read (a refused request) the channel is `unknown`.
    let (api, channel) = match req.extensions().get::<MatchedPath>().map(MatchedPath::as_str) {
        Some(SEND_EMAIL_PATH) => ("send_email", CHANNEL_EMAIL),
        Some(SEND_SMS_PATH) => ("send_sms", CHANNEL_SMS),
        Some(SEND_PUSH_PATH) => ("send_push", CHANNEL_PUSH),
        Some(SEND_NOTIFICATIONS_PATH) => ("send_notifications", "unknown"),
        _ => return next.run(req).await,
    };
    let response = next.run(req).await;
    if let Some(per_channel) = response.extensions().get::<ChannelOutcomes>() {
        for (channel, outcome) in &per_channel.0 {
            metrics::counter!(m::REQUESTS, "api" => api, "outcome" => *outcome, "channel" => *channel).increment(1);
        }
        return response;
    }
    let outcome = match response.extensions().get::<Outcome>() {
        Some(outcome) => outcome.0,
        None if response.status() == StatusCode::SERVICE_UNAVAILABLE => "timeout",
        None => "rejected_other",
    };
    metrics::counter!(m::REQUESTS, "api" => api, "outcome" => outcome, "channel" => channel).increment(1);
    response
}

/// Records request latency by matched route (never the raw path) and status class.
async fn observe_latency(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let response = next.run(req).await;
    let class = match response.status().as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::histogram!(m::HTTP_DURATION, "route" => route, "status" => class).record(started.elapsed().as_secs_f64());
    response
}
