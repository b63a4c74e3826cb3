//! One notification's history, as data: the row's state and times, every VA Notify attempt, every
//! delivery-status callback and the click counts (`GET /admin/notifications/{id}`, `ebg-notify show`).
//!
//! Privacy by construction: the read returns the participant only as the keyed hash logs use
//! (`telemetry.pii_hash_key`); the raw id is filled in only when the caller asks for it and is allowed
//! to see it. Names and email addresses are never stored, so they cannot appear.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::telemetry::PiiHasher;

/// A notification and everything that happened to it.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct NotificationHistory {
    pub id: Uuid,
    pub channel: String,
    /// The template requested: a UUID for email and SMS, a VEText id for push.
    pub template_id: String,
    /// The template the latest send used when it differed from `template_id` (the universal-link swap).
    pub sent_template_id: Option<String>,
    /// queued, sending, retry_wait, sent, delivered, temporary_failure, permanent_failure, failed, dead,
    /// skipped, suppressed or duplicate.
    pub status: String,
    /// Why it is in that state (e.g. `va_notify_400`, `not_found`, `replayed`).
    pub status_reason: Option<String>,
    /// Keyed hash of the participant id (the same value the logs carry).
    pub participant_hash: String,
    /// The participant id itself: only for admin tokens listed in `admin.pii_token_names`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub participant_id: Option<String>,
    /// For a `duplicate`: the notification it repeated.
    pub duplicate_of: Option<Uuid>,
    /// VA Notify's id of the latest send.
    pub va_notify_id: Option<Uuid>,
    /// VA Notify calls made (each is an attempt below, unless retention removed it).
    pub attempt_count: i32,
    /// Times VA Notify accepted it (more than 1 after a resend).
    pub sends: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// When a worker may next pick it up (null once nothing is left to do).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub attempts: Vec<Attempt>,
    pub callbacks: Vec<CallbackEvent>,
    pub clicks: Clicks,
}

/// One VA Notify call.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Attempt {
    /// 1-based try number.
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Milliseconds from start to finish; null while in flight.
    pub duration_ms: Option<i64>,
    /// sent, retryable, final, daily_limit, circuit_open, or in_flight (no answer recorded).
    pub outcome: String,
    /// VA Notify's HTTP status, when it answered.
    pub http_status: Option<i32>,
    /// Bounded error label (never a message from upstream).
    pub error_class: Option<String>,
    pub va_notify_id: Option<Uuid>,
}

/// One delivery-status callback from VA Notify.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct CallbackEvent {
    pub received_at: DateTime<Utc>,
    /// VA Notify's status: delivered, temporary-failure, permanent-failure, ...
    pub status: String,
    pub status_reason: Option<String>,
    /// The send it reports on.
    pub va_notify_id: Option<Uuid>,
    /// What it did here: moved (state changed), resend, dead, or recorded (no change: stale or early).
    pub effect: String,
    /// VA Notify's own times for the send.
    pub sent_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub provider: Option<String>,
}

/// Clicks through the tracked link.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Clicks {
    /// Every request through the link, HEAD and link scanners included.
    pub total: i32,
    /// GET requests by people (not link scanners): the notification was clicked when above 0.
    pub by_people: i32,
    pub first_at: Option<DateTime<Utc>>,
    pub last_at: Option<DateTime<Utc>>,
    pub first_by_person_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    channel: String,
    template_id: String,
    sent_template_id: Option<String>,
    status: String,
    status_reason: Option<String>,
    participant_id: String,
    duplicate_of: Option<Uuid>,
    va_notify_id: Option<Uuid>,
    attempts: i32,
    sends: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
    delivered_at: Option<DateTime<Utc>>,
    next_attempt_at: Option<DateTime<Utc>>,
}

/// Reads one notification's history; `None` when there is no such notification. The participant id is
/// included only with `reveal_participant`; its keyed hash always is.
pub async fn history(
    pool: &PgPool,
    id: Uuid,
    hasher: &PiiHasher,
    reveal_participant: bool,
) -> Result<Option<NotificationHistory>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as!(
        Row,
        "select id, channel, template_id, sent_template_id, status, status_reason, participant_id, duplicate_of, va_notify_id,
                attempts, sends, created_at, updated_at, sent_at, delivered_at, next_attempt_at
         from notifications where id = $1",
        id
    )
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let attempts: Vec<Attempt> = sqlx::query_as!(
        Attempt,
        r#"select attempt, started_at, finished_at,
                (extract(epoch from finished_at - started_at) * 1000)::bigint as "duration_ms?",
                outcome, http_status, error_class, va_notify_id
         from notification_attempts where notification_id = $1 order by attempt"#,
        id
    )
    .fetch_all(pool)
    .await?;
    let callbacks: Vec<CallbackEvent> = sqlx::query_as!(
        CallbackEvent,
        "select received_at, status, status_reason, va_notify_id, effect, sent_at, completed_at, provider
         from notification_events where notification_id = $1 order by received_at, id",
        id
    )
    .fetch_all(pool)
    .await?;
    let clicks: Option<Clicks> = sqlx::query_as!(
        Clicks,
        "select total, counted as by_people, first_at, last_at, first_counted_at as first_by_person_at
         from clicks where notification_id = $1",
        id
    )
    .fetch_optional(pool)
    .await?;
    Ok(Some(NotificationHistory {
        id: row.id,
        channel: row.channel,
        template_id: row.template_id,
        sent_template_id: row.sent_template_id,
        status: row.status,
        status_reason: row.status_reason,
        participant_hash: hasher.participant(&row.participant_id),
        participant_id: reveal_participant.then_some(row.participant_id),
        duplicate_of: row.duplicate_of,
        va_notify_id: row.va_notify_id,
        attempt_count: row.attempts,
        sends: row.sends,
        created_at: row.created_at,
        updated_at: row.updated_at,
        sent_at: row.sent_at,
        delivered_at: row.delivered_at,
        next_attempt_at: row.next_attempt_at,
        attempts,
        callbacks,
        clicks: clicks.unwrap_or_default(),
    }))
}

impl NotificationHistory {
    /// The history as a timeline for a terminal: the row, then every attempt, callback and click in
    /// the order they happened.
    pub fn timeline(&self) -> String {
        use std::fmt::Write;
        let when = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string();
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "notification {}", self.id);
        let _ = writeln!(
            out,
            "status: {}{}",
            self.status,
            self.status_reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
        );
        let sent_as = self.sent_template_id.as_deref().map(|t| format!(" (sent as {t})")).unwrap_or_default();
        let _ = writeln!(out, "channel: {}  template: {}{sent_as}", self.channel, self.template_id);
        let participant = match &self.participant_id {
            Some(id) => format!("{id} (hash {})", self.participant_hash),
            None => format!("hash {}", self.participant_hash),
        };
        let _ = writeln!(out, "participant: {participant}");
        let _ = writeln!(
            out,
            "VA Notify id: {}  attempts: {}  sends: {}",
            or_dash(self.va_notify_id.map(|v| v.to_string())),
            self.attempt_count,
            self.sends
        );
        if let Some(of) = self.duplicate_of {
            let _ = writeln!(out, "duplicate of: {of}");
        }
        if let Some(next) = self.next_attempt_at {
            let _ = writeln!(out, "next attempt: {}", when(next));
        }
        let _ = writeln!(
            out,
            "clicks: {} by people, {} in all (HEAD and link scanners included)",
            self.clicks.by_people, self.clicks.total
        );
        let _ = writeln!(out, "\ntimeline:");
        for (at, line) in self.events() {
            let _ = writeln!(out, "  {}  {line}", when(at));
        }
        out
    }

    /// Everything that happened, in time order, as `(when, what)`.
    fn events(&self) -> Vec<(DateTime<Utc>, String)> {
        let mut events = vec![(self.created_at, "requested".to_owned())];
        for a in &self.attempts {
            let mut line = format!("attempt {}: {}", a.attempt, a.outcome);
            if let Some(status) = a.http_status {
                line.push_str(&format!(" (HTTP {status})"));
            }
            if let Some(class) = &a.error_class {
                line.push_str(&format!(" error={class}"));
            }
            if let Some(ms) = a.duration_ms {
                line.push_str(&format!(" in {ms} ms"));
            }
            if let Some(va) = a.va_notify_id {
                line.push_str(&format!(" VA Notify id {va}"));
            }
            events.push((a.started_at, line));
        }
        for c in &self.callbacks {
            let reason = c.status_reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
            events.push((c.received_at, format!("callback: {}{reason} -> {}", c.status, c.effect)));
        }
        if let Some(at) = self.clicks.first_by_person_at {
            events.push((at, "first click by a person".to_owned()));
        }
        if let Some(at) = self.delivered_at {
            events.push((at, "delivered".to_owned()));
        }
        // Stable: at equal times, the order above (request, attempts, callbacks, clicks) stands.
        events.sort_by_key(|(at, _)| *at);
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn the_timeline_is_in_time_order_and_shows_no_raw_participant_id_unless_revealed() {
        let mut h = NotificationHistory {
            id: Uuid::nil(),
            channel: "email".into(),
            template_id: Uuid::nil().to_string(),
            sent_template_id: None,
            status: "delivered".into(),
            status_reason: None,
            participant_hash: "abcdef0123456789".into(),
            participant_id: None,
            duplicate_of: None,
            va_notify_id: None,
            attempt_count: 2,
            sends: 1,
            created_at: at("2026-01-01T00:00:00Z"),
            updated_at: at("2026-01-01T00:00:05Z"),
            sent_at: None,
            delivered_at: Some(at("2026-01-01T00:00:04Z")),
            next_attempt_at: None,
            attempts: vec![
                Attempt {
                    attempt: 2,
                    started_at: at("2026-01-01T00:00:02Z"),
                    finished_at: Some(at("2026-01-01T00:00:02.250Z")),
                    duration_ms: Some(250),
                    outcome: "sent".into(),
                    http_status: Some(201),
                    error_class: None,
                    va_notify_id: None,
                },
                Attempt {
                    attempt: 1,
                    started_at: at("2026-01-01T00:00:01Z"),
                    finished_at: None,
                    duration_ms: None,
                    outcome: "retryable".into(),
                    http_status: Some(500),
                    error_class: Some("http_500".into()),
                    va_notify_id: None,
                },
            ],
            callbacks: vec![CallbackEvent {
                received_at: at("2026-01-01T00:00:03Z"),
                status: "delivered".into(),
                status_reason: None,
                va_notify_id: None,
                effect: "moved".into(),
                sent_at: None,
                completed_at: None,
                provider: None,
            }],
            clicks: Clicks::default(),
        };
        let text = h.timeline();
        let order: Vec<usize> =
            ["requested", "attempt 1: retryable (HTTP 500)", "attempt 2: sent (HTTP 201)", "callback"]
                .iter()
                .map(|needle| text.find(needle).unwrap_or_else(|| panic!("{needle} in {text}")))
                .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(text.contains("participant: hash abcdef0123456789"), "{text}");
        h.participant_id = Some("600061742".into());
        assert!(h.timeline().contains("participant: 600061742 (hash abcdef0123456789)"));
    }
}
