//! Settings shared by every outbound HTTP client (VA Notify, BGS).

use std::time::Duration;

/// An HTTP client with the given timeouts that never follows redirects: a redirected POST turns
/// into a GET and silently does nothing, so a redirect from an upstream is treated as an error.
pub fn http_client(timeout_ms: u64, connect_timeout_ms: u64) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(timeout_ms))
        .connect_timeout(Duration::from_millis(connect_timeout_ms))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("ebg-notify/", env!("CARGO_PKG_VERSION")))
        .build()
}
