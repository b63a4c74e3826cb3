//! `GET /c/{token}/{*path}`: the click tracker (SPEC §8). Always redirects to the configured web host;
//! records the click only when the token is genuine.

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, LOCATION, REFERRER_POLICY, USER_AGENT};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::clicks::{self, ClickLinks};
use crate::metrics as m;
use crate::state::AppState;

/// Follow a tracked link: 302 to `https://<clicks.web_host>/<path>?<query>`.
#[utoipa::path(get, path = "/c/{token}/{path}", tag = "clicks", operation_id = "follow_click",
    params(
        ("token" = String, Path, description = "Signed notification token from the email's link"),
        ("path" = String, Path, description = "The VA.gov path the template linked to (may contain `/`)"),
    ),
    responses((status = 302, description = "Redirect to the web host, query kept; also for unknown or forged tokens (nothing is recorded then)",
        headers(("Location" = String, description = "https://<clicks.web_host>/<path>?<query>"))))
)]
pub async fn follow(State(state): State<AppState>, method: Method, headers: HeaderMap, uri: Uri) -> Response {
    let config = &state.config.clicks;
    // The raw path, not axum's decoded capture: percent-encoded bytes must reach VA.gov as they came.
    let after = uri.path().strip_prefix(clicks::PATH_PREFIX).unwrap_or_default();
    let (token, rest) = after.split_once('/').unwrap_or((after, ""));
    let target = clicks::redirect_target(&config.web_host, rest, uri.query());

    match ClickLinks::from_config(config).verify(token) {
        Some(id) => {
            let user_agent = headers.get(USER_AGENT).and_then(|v| v.to_str().ok());
            let kind = clicks::classify(method == Method::HEAD, user_agent, &config.scanner_user_agents);
            // The Veteran is redirected whatever happens to the bookkeeping.
            if let Err(e) = clicks::record(&state.db, id, kind).await {
                tracing::warn!(error = %e, "recording a click failed");
            }
        }
        None => metrics::counter!(m::CLICKS, "kind" => "invalid", "channel" => crate::clicks::NO_CHANNEL).increment(1),
    }

    let location = HeaderValue::try_from(target)
        .or_else(|_| HeaderValue::try_from(format!("https://{}/", config.web_host)))
        .unwrap_or_else(|_| HeaderValue::from_static("https://www.va.gov/"));
    (
        StatusCode::FOUND,
        [
            (LOCATION, location),
            (CACHE_CONTROL, HeaderValue::from_static("no-store")),
            // The token must not travel on to VA.gov in a Referer header.
            (REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        ],
    )
        .into_response()
}

/// Follow a tracked link with no path (`/c/{token}` or `/c/{token}/`): 302 to `https://<clicks.web_host>/?<query>`.
#[utoipa::path(get, path = "/c/{token}", tag = "clicks", operation_id = "follow_click_root",
    params(("token" = String, Path, description = "Signed notification token from the email's link")),
    responses((status = 302, description = "Redirect to the web host's root, query kept; also for unknown or forged tokens",
        headers(("Location" = String, description = "https://<clicks.web_host>/?<query>"))))
)]
pub async fn follow_bare(state: State<AppState>, method: Method, headers: HeaderMap, uri: Uri) -> Response {
    follow(state, method, headers, uri).await
}
