//! Click tracking without changing VA Notify templates (SPEC §8).
//!
//! Templates build links as `https://((host))/<path>`. With tracking on, the worker sends
//! `host = <tracker host>/c/<token>`, so a link becomes `https://<tracker host>/c/<token>/<path>`.
//! `GET /c/<token>/<path>` records the click and redirects to `https://<web host>/<path>?<query>`.
//!
//! The token is the notification id and a truncated HMAC-SHA256 tag over it (16 + 8 bytes, 32 characters of
//! unpadded URL-safe base64): short enough for a link, unforgeable enough that nobody can inflate another
//! notification's clicks, and verifiable without a database look-up. A bad token still redirects (the
//! Veteran must reach VA.gov) but records nothing.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::config::{ClicksConfig, Secret};
use crate::metrics as m;
use crate::outbox;

/// Bytes of the HMAC tag kept in a token: 64 bits, ample against online guessing of a link.
const TAG_LEN: usize = 8;
/// Path prefix of tracked links.
pub const PATH_PREFIX: &str = "/c/";

/// Issues and checks click tokens.
#[derive(Clone)]
pub struct ClickLinks {
    secret: Secret,
    /// The tracker's base URL without its scheme or trailing slash, e.g. `notify-links.va.gov`.
    host: String,
}

impl ClickLinks {
    /// Built from the configuration whether tracking is on or not: links already in mailboxes keep
    /// being counted after tracking is switched off.
    pub fn from_config(config: &ClicksConfig) -> Self {
        let base = config.base_url.trim().trim_end_matches('/');
        let host = base.split_once("://").map_or(base, |(_, rest)| rest);
        Self { secret: config.secret.clone(), host: host.to_owned() }
    }

    /// The `host` personalisation for a notification: `<tracker host>/c/<token>`.
    pub fn host_for(&self, notification_id: Uuid) -> String {
        format!("{}{PATH_PREFIX}{}", self.host, self.token(notification_id))
    }

    /// The signed token for a notification id.
    pub fn token(&self, notification_id: Uuid) -> String {
        let mut bytes = notification_id.as_bytes().to_vec();
        bytes.extend_from_slice(&self.tag(notification_id)[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The notification id a token names, if its tag is valid.
    pub fn verify(&self, token: &str) -> Option<Uuid> {
        let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
        if bytes.len() != 16 + TAG_LEN {
            return None;
        }
        let id = Uuid::from_slice(&bytes[..16]).ok()?;
        bool::from(self.tag(id)[..TAG_LEN].ct_eq(&bytes[16..])).then_some(id)
    }

    fn tag(&self, id: Uuid) -> [u8; 32] {
        // HMAC takes keys of any length; the error branch cannot happen.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(self.secret.expose().as_bytes()) else {
            return [0; 32];
        };
        mac.update(b"ebg-click:");
        mac.update(id.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// The redirect for a click: `https://<web_host>/<rest>?<query>`, where `rest` is the raw (still
/// percent-encoded) path after the token. Whatever `rest` holds, the result is on `web_host`: leading
/// slashes and backslashes are dropped (no `//evil.com` scheme-relative tricks), the path is set through a
/// URL parser (so `@`, `:` or a whole URL in it stay path text), and encoded bytes are never decoded (so
/// `%0D%0A` cannot split a header).
pub fn redirect_target(web_host: &str, rest: &str, query: Option<&str>) -> String {
    let fallback = format!("https://{web_host}/");
    let Ok(mut url) = url::Url::parse(&fallback) else {
        return fallback;
    };
    url.set_path(rest.trim_start_matches(['/', '\\']));
    url.set_query(query.filter(|q| !q.is_empty()));
    // Dot segments (`a/..//x`) can still leave a path starting with `//`: harmless after a host, but
    // collapse it so no client can read it as an authority.
    if url.path().starts_with("//") {
        let path = url.path().trim_start_matches('/').to_owned();
        url.set_path(&path);
    }
    if url.scheme() == "https" && url.host_str() == Some(web_host) && url.username().is_empty() {
        url.into()
    } else {
        fallback
    }
}

/// Whether a request should count as a person's click: a GET from a user agent that is not a known
/// link scanner (matched case-insensitively by substring; an empty user agent counts as a scanner).
pub fn classify(is_head: bool, user_agent: Option<&str>, scanners: &[String]) -> &'static str {
    if is_head {
        return "head";
    }
    let ua = user_agent.map(str::trim).unwrap_or_default().to_ascii_lowercase();
    if ua.is_empty() || scanners.iter().any(|s| !s.is_empty() && ua.contains(&s.to_ascii_lowercase())) {
        "scanner"
    } else {
        "counted"
    }
}

/// The channels whose messages carry the tracked link (push has none): the `channel` values of the click
/// counters, zero-initialised so a per-channel click-through monitor has a series from the start.
pub const TRACKED_CHANNELS: [&str; 2] = [outbox::CHANNEL_EMAIL, outbox::CHANNEL_SMS];

/// The `channel` of a click that recorded nothing (a bad token, a notification retention deleted): one
/// label set for the whole family, as `ebg_requests_total` says `unknown` before it knows the channel.
pub const NO_CHANNEL: &str = "unknown";

/// Records a click on a notification (nothing if it does not exist, e.g. deleted by retention).
/// Returns true when this was the notification's first counted click (a new unique click).
///
/// The counters carry the notification's channel, learnt from the outbox (the owner of `notifications`);
/// a click that recorded nothing carries [`NO_CHANNEL`].
#[tracing::instrument(skip_all, fields(kind))]
pub async fn record(pool: &PgPool, notification_id: Uuid, kind: &'static str) -> Result<bool, sqlx::Error> {
    let counted = i32::from(kind == "counted");
    let recorded = match outbox::channel_of(pool, notification_id).await? {
        Some(channel) => upsert(pool, notification_id, counted).await?.map(|after| (channel, after)),
        None => None,
    };
    let Some((channel, after)) = recorded else {
        metrics::counter!(m::CLICKS, "kind" => kind, "channel" => NO_CHANNEL).increment(1);
        return Ok(false);
    };
    let first = counted == 1 && after == 1;
    metrics::counter!(m::CLICKS, "kind" => kind, "channel" => channel).increment(1);
    if first {
        metrics::counter!(m::CLICKS_UNIQUE, "channel" => channel).increment(1);
    }
    Ok(first)
}

/// Adds the click to the notification's `clicks` row; its `counted` after, or `None` when the
/// notification is gone (retention may delete it between the channel look-up and this statement).
async fn upsert(pool: &PgPool, notification_id: Uuid, counted: i32) -> Result<Option<i32>, sqlx::Error> {
    // A missing notification is refused by the foreign key rather than checked again here.
    let inserted = sqlx::query_scalar!(
        "insert into clicks as c (notification_id, total, counted, first_counted_at)
         values ($1, 1, $2, case when $2 > 0 then now() end)
         on conflict (notification_id) do update set last_at = now(), total = c.total + 1,
             counted = c.counted + excluded.counted,
             first_counted_at = coalesce(c.first_counted_at, excluded.first_counted_at)
         returning counted",
        notification_id,
        counted,
    )
    .fetch_one(pool)
    .await;
    match inserted {
        Ok(after) => Ok(Some(after)),
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> ClickLinks {
        ClickLinks::from_config(&ClicksConfig {
            enabled: true,
            base_url: "https://notify-links.va.gov/".into(),
            web_host: "www.va.gov".into(),
            secret: Secret::new("a-test-secret-of-at-least-32-characters"),
            scanner_user_agents: vec![],
        })
    }

    #[test]
    fn tokens_round_trip_and_are_short() {
        let id = Uuid::new_v4();
        let token = links().token(id);
        assert_eq!(token.len(), 32);
        assert_eq!(links().verify(&token), Some(id));
        assert_eq!(links().host_for(id), format!("notify-links.va.gov/c/{token}"));
    }

    #[test]
    fn forged_or_mangled_tokens_are_refused() {
        let id = Uuid::new_v4();
        let token = links().token(id);
        let mut other = links();
        other.secret = Secret::new("another-secret-of-at-least-32-characters");
        assert_eq!(other.verify(&token), None);
        let mut flipped = token.clone().into_bytes();
        flipped[31] = if flipped[31] == b'A' { b'B' } else { b'A' };
        assert_eq!(links().verify(&String::from_utf8(flipped).unwrap()), None);
        for bad in ["", "abc", "%%%", &token[..31], &format!("{token}A")] {
            assert_eq!(links().verify(bad), None, "{bad}");
        }
    }

    #[test]
    fn redirects_keep_path_and_query_on_the_web_host() {
        assert_eq!(redirect_target("www.va.gov", "", None), "https://www.va.gov/");
        assert_eq!(
            redirect_target("www.va.gov", "track-claims/your-claims", Some("tab=letters&x=1")),
            "https://www.va.gov/track-claims/your-claims?tab=letters&x=1"
        );
    }

    #[test]
    fn hostile_paths_never_leave_the_web_host() {
        let cases = [
            "//evil.com",
            "/\\evil.com",
            "\\\\evil.com/x",
            "%2F%2Fevil.com",
            "%5Cevil.com",
            "%5C%5Cevil.com",
            "https://evil.com/",
            "https:/evil.com",
            "@evil.com",
            "user:pass@evil.com",
            "a/..//evil.com",
            "..%2F..%2Fevil.com",
            "x%0D%0ALocation:%20https://evil.com",
            "/%09/evil.com",
        ];
        for rest in cases {
            let target = redirect_target("www.va.gov", rest, Some("next=https://evil.com"));
            let parsed = url::Url::parse(&target).unwrap();
            assert_eq!(parsed.host_str(), Some("www.va.gov"), "{rest} -> {target}");
            assert_eq!(parsed.scheme(), "https");
            assert!(parsed.username().is_empty() && parsed.password().is_none(), "{rest} -> {target}");
            assert!(target.starts_with("https://www.va.gov/") && !target.starts_with("https://www.va.gov//"));
            assert!(!target.contains('\r') && !target.contains('\n'));
        }
    }

    #[test]
    fn head_and_scanners_are_not_counted() {
        let scanners = vec!["Proofpoint".to_owned(), "bot".to_owned()];
        assert_eq!(classify(false, Some("Mozilla/5.0 (iPhone)"), &scanners), "counted");
        assert_eq!(classify(true, Some("Mozilla/5.0"), &scanners), "head");
        assert_eq!(classify(false, Some("proofpoint url defense"), &scanners), "scanner");
        assert_eq!(classify(false, Some("Googlebot/2.1"), &scanners), "scanner");
        assert_eq!(classify(false, None, &scanners), "scanner");
        assert_eq!(classify(false, Some("  "), &scanners), "scanner");
    }
}
