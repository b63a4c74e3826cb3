//! Sandbox mode: no call to VA Notify; a generated id and, after a delay, a `delivered` callback to our own
//! callback route, so the whole flow can be seen locally without credentials (SPEC §6).

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{Channel, SandboxCallback, SentNotification};

/// The callback VA Notify would post, field for field (SPEC §7), minus anything about the recipient.
#[derive(Serialize)]
struct DeliveredCallback {
    id: Uuid,
    reference: Uuid,
    /// VA sends the recipient address here; the sandbox has none to send.
    to: Option<String>,
    status: &'static str,
    status_reason: Option<String>,
    created_at: String,
    completed_at: String,
    sent_at: String,
    notification_type: &'static str,
    provider: &'static str,
}

/// VA Notify's timestamp format: RFC 3339, UTC, microseconds, `Z`.
fn va_timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub(crate) struct Sandbox {
    http: reqwest::Client,
    callback: Option<SandboxCallback>,
    delivery_delay: Duration,
}

impl Sandbox {
    pub(crate) fn new(http: reqwest::Client, callback: Option<SandboxCallback>, delivery_delay: Duration) -> Self {
        Self { http, callback, delivery_delay }
    }

    /// "Sends" an email or SMS. The callback is posted from a detached task so the caller sees VA-like
    /// latency (none) and a failed callback cannot fail the send. (Push gets no callbacks, from VA or here.)
    pub(crate) fn send(&self, reference: Uuid, channel: Channel) -> SentNotification {
        let id = Uuid::new_v4();
        if let Some(callback) = &self.callback {
            let created_at = Utc::now();
            let http = self.http.clone();
            let url = callback.url.clone();
            let token = callback.bearer_token.clone();
            let delay = self.delivery_delay;
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let completed_at = Utc::now();
                let payload = DeliveredCallback {
                    id,
                    reference,
                    to: None,
                    status: "delivered",
                    status_reason: None,
                    created_at: va_timestamp(created_at),
                    completed_at: va_timestamp(completed_at),
                    // Halfway between, as a provider hand-off would be.
                    sent_at: va_timestamp(created_at + (completed_at - created_at) / 2),
                    notification_type: channel.as_str(),
                    provider: "sandbox",
                };
                match http.post(&url).bearer_auth(token).json(&payload).send().await {
                    Ok(response) if response.status().is_success() => {}
                    Ok(response) => tracing::warn!(
                        %reference,
                        http_status = response.status().as_u16(),
                        "sandbox delivery callback was refused"
                    ),
                    Err(err) => tracing::warn!(%reference, error = %err, "sandbox delivery callback failed"),
                }
            });
        }
        SentNotification { id }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn timestamps_have_microseconds_and_z() {
        let at = Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap() + chrono::Duration::microseconds(6);
        assert_eq!(va_timestamp(at), "2025-01-02T03:04:05.000006Z");
    }
}
