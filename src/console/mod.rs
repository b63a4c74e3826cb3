//! The operators' web console at `/console`: server-rendered HTML (maud), usable without JavaScript
//! (forms and POST-redirect-GET), every asset served by the binary.
//!
//! Every change goes through the same domain functions as the JSON API ([`crate::toggles::Toggles::apply`],
//! [`crate::rollout::override_plan`], ...) and is audited under the signed-in token's name. Sessions and
//! CSRF tokens are in [`session`]; pages are in one module each.

mod charts;
mod features;
mod layout;
mod notifications;
mod report;
mod rollouts;
mod session;

use axum::Router;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::map_response;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::html;

pub use session::SessionKey;

use crate::state::AppState;
use layout::{Notice, page_signed_out};

/// No inline script or style, nothing from elsewhere: every asset is served by this binary.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// The console's routes, `/` included (it redirects to `/console`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route("/console", get(features::list))
        .route("/console/", get(|| async { Redirect::to("/console") }))
        .route(layout::CSS_PATH, get(stylesheet))
        .route("/console/sign-in", get(session::sign_in_page).post(session::sign_in))
        .route("/console/sign-out", post(session::sign_out))
        .route("/console/features/{name}", get(features::show))
        .route("/console/features/{name}/{action}", post(features::change))
        .route("/console/rollouts", get(rollouts::list).post(rollouts::create))
        .route("/console/rollouts/{id}", get(rollouts::show))
        .route("/console/rollouts/{id}/{action}", post(rollouts::act))
        .route("/console/report", get(report::report_page))
        .route("/console/report.md", get(report::markdown))
        .route("/console/notifications", get(notifications::page_get))
        .route("/console/notifications/replay", post(notifications::replay))
        .route("/console/notifications/{id}", get(notifications::show))
        .layer(map_response(security_headers))
}

async fn stylesheet() -> Response {
    ([(CONTENT_TYPE, "text/css; charset=utf-8"), (CACHE_CONTROL, "public, max-age=3600")], layout::CSS).into_response()
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = |headers: &mut axum::http::HeaderMap, name: &'static str, value: &'static str| {
        headers.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
    };
    set(headers, "content-security-policy", CONTENT_SECURITY_POLICY);
    set(headers, "x-content-type-options", "nosniff");
    set(headers, "x-frame-options", "DENY");
    // `same-origin`, not `no-referrer`: with no referrer policy browsers send `Origin: null` on form posts,
    // and the origin check needs the real one.
    set(headers, "referrer-policy", "same-origin");
    if !headers.contains_key(CACHE_CONTROL) {
        set(headers, "cache-control", "no-store");
    }
    response
}

/// Why a console request was not served. Rendered as an HTML page (or a redirect to sign-in).
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No valid session: go to the sign-in page.
    #[error("signed out")]
    SignedOut,
    /// Refused: wrong CSRF token, cross-site post, or a read-only session (403).
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// No such feature, plan or notification (404).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request cannot be understood (400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The database is unreachable or failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A bug or an unexpected failure.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (status, text) = match &self {
            Self::SignedOut => return Redirect::to("/console/sign-in").into_response(),
            Self::Forbidden(text) => (StatusCode::FORBIDDEN, (*text).to_owned()),
            Self::NotFound(what) => (StatusCode::NOT_FOUND, format!("No such {what}.")),
            Self::BadRequest(text) => (StatusCode::BAD_REQUEST, text.clone()),
            Self::Database(e) if crate::db::is_unavailable(e) => {
                tracing::warn!(error = %e, "console: database unavailable");
                (StatusCode::SERVICE_UNAVAILABLE, "The database is unavailable; try again shortly.".to_owned())
            }
            Self::Database(e) => {
                tracing::error!(error = %e, "console request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong; it has been logged.".to_owned())
            }
            Self::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "console request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong; it has been logged.".to_owned())
            }
        };
        if status.is_client_error() {
            tracing::info!(status = status.as_u16(), error = %self, "console request refused");
        }
        let body = html! {
            h1 { (status.canonical_reason().unwrap_or("Error")) }
            p { a href="/console" { "Back to the console" } }
        };
        (status, page_signed_out("Error", Some(Notice::error(text)), body)).into_response()
    }
}
