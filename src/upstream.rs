//! Settings shared by every outbound HTTP client (VA Notify, BGS, MPI).

use std::time::Duration;

/// An HTTP client with the given timeouts that never follows redirects: a redirected POST turns
/// into a GET and silently does nothing, so a redirect from an upstream is treated as an error.
pub fn http_client(timeout: Duration, connect_timeout: Duration) -> reqwest::Result<reqwest::Client> {
    client_builder(timeout, connect_timeout).build()
}

/// The builder behind [`http_client`], for clients that add TLS settings (MPI's mutual TLS).
pub fn client_builder(timeout: Duration, connect_timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(timeout)
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("ebg-notify/", env!("CARGO_PKG_VERSION")))
}

/// Why a capped body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// Longer than the cap: not the upstream talking, or not an answer worth reading whole.
    TooLarge,
    /// The connection failed mid-body.
    Transport(reqwest::Error),
}

/// Reads a response body of at most `max_bytes`, refusing larger ones before reading them whole, so a
/// misbehaving proxy cannot exhaust memory shared by every worker.
pub async fn read_capped(mut response: reqwest::Response, max_bytes: usize) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|len| len > max_bytes as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > max_bytes {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
