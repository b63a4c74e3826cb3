//! Click tracking (SPEC §8): the `host` rewrite, redirects that never leave the web host, and counting.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use serde_json::json;

use crate::callbacks::wired;
use crate::helpers::*;

const BROWSER: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15";

/// Clicks on, tracker at https://links.example.test, redirects to www.va.gov.
pub const CLICKS_ON: &[(&str, &str)] = &[
    ("EBG_CLICKS__ENABLED", "true"),
    ("EBG_CLICKS__BASE_URL", "https://links.example.test"),
    ("EBG_CLICKS__WEB_HOST", "www.va.gov"),
];

/// The click token the worker put in the notification's `host`.
pub fn token_in(notify: &ebg_testkit::FakeVaNotify, id: Uuid) -> String {
    let request = notify.accepted().into_iter().find(|r| r.reference() == Some(id.to_string().as_str())).unwrap();
    let host = request.body.unwrap()["personalisation"]["host"].as_str().unwrap().to_owned();
    host.strip_prefix("links.example.test/c/").unwrap_or_else(|| panic!("host is {host}")).to_owned()
}

/// Follows `path` (not normalised by any client library) and returns (status, Location).
pub async fn raw_get(app: &TestApp, method: &str, path: &str, user_agent: &str) -> (u16, Option<String>) {
    let addr = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: {user_agent}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let location = text
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("location")).map(|(_, v)| v.trim()))
        .map(str::to_owned);
    (status, location)
}

async fn metric_values(app: &TestApp, series: &[&str]) -> Vec<f64> {
    let mut out = Vec::new();
    for s in series {
        out.push(app.metric(s).await);
    }
    out
}

async fn click_row(app: &TestApp, id: Uuid) -> Option<(i32, i32)> {
    sqlx::query_as("select total, counted from clicks where notification_id = $1")
        .bind(id)
        .fetch_optional(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn tracked_links_redirect_with_path_and_query_and_count_unique_clicks() {
    let (app, notify, _bgs) = wired(CLICKS_ON).await;
    let id = queue_for(&app, PARTICIPANT_ID).await;
    app.deliver_all().await;
    let token = token_in(&notify, id);
    assert_eq!(token.len(), 32);

    let unique = r#"ebg_clicks_unique_total{channel="email"}"#;
    let before = app.metric(unique).await;
    let (status, location) =
        raw_get(&app, "GET", &format!("/c/{token}/track-claims/your-claims?tab=letters"), BROWSER).await;
    assert_eq!(status, 302);
    assert_eq!(location.as_deref(), Some("https://www.va.gov/track-claims/your-claims?tab=letters"));
    assert_eq!(click_row(&app, id).await, Some((1, 1)));

    // HEAD and link scanners are redirected but not counted as a person.
    assert_eq!(raw_get(&app, "HEAD", &format!("/c/{token}/x"), BROWSER).await.0, 302);
    assert_eq!(raw_get(&app, "GET", &format!("/c/{token}/x"), "Proofpoint URL Defense").await.0, 302);
    assert_eq!(click_row(&app, id).await, Some((3, 1)));
    // A second click by the person: counted, but still one unique click.
    let (_, location) = raw_get(&app, "GET", &format!("/c/{token}"), BROWSER).await;
    assert_eq!(location.as_deref(), Some("https://www.va.gov/"));
    let (_, location) = raw_get(&app, "GET", &format!("/c/{token}/"), BROWSER).await;
    assert_eq!(location.as_deref(), Some("https://www.va.gov/"));
    assert_eq!(click_row(&app, id).await, Some((5, 3)));
    assert_eq!(app.metric(unique).await, before + 1.0);
}

#[tokio::test]
async fn bad_tokens_still_redirect_but_record_nothing() {
    let (app, notify, _bgs) = wired(CLICKS_ON).await;
    let id = queue_for(&app, PARTICIPANT_ID).await;
    app.deliver_all().await;
    let token = token_in(&notify, id);
    let forged = format!("{}{}", &token[..31], if token.ends_with('A') { 'B' } else { 'A' });
    for bad in [forged.as_str(), "nonsense", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"] {
        let (status, location) = raw_get(&app, "GET", &format!("/c/{bad}/claims?x=1"), BROWSER).await;
        assert_eq!(status, 302);
        assert_eq!(location.as_deref(), Some("https://www.va.gov/claims?x=1"));
    }
    let rows: i64 = sqlx::query_scalar("select count(*) from clicks").fetch_one(&app.db).await.unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn hostile_paths_never_redirect_off_the_web_host() {
    let (app, notify, _bgs) = wired(CLICKS_ON).await;
    let id = queue_for(&app, PARTICIPANT_ID).await;
    app.deliver_all().await;
    let token = token_in(&notify, id);
    let hostile = [
        "//evil.com",
        "///evil.com",
        "/\\evil.com",
        "/%2F%2Fevil.com",
        "/%5Cevil.com",
        "/%5C%5Cevil.com",
        "/https://evil.com/",
        "/@evil.com",
        "/user:pass@evil.com/",
        "/..//evil.com",
        "/a/../..//evil.com",
        "/%0D%0ALocation:%20https://evil.com",
        "/x?next=//evil.com",
        "/%09/evil.com",
    ];
    for suffix in hostile {
        let (status, location) = raw_get(&app, "GET", &format!("/c/{token}{suffix}"), BROWSER).await;
        if status == 400 {
            // The HTTP layer refused the request line itself: no redirect at all.
            continue;
        }
        assert_eq!(status, 302, "{suffix}");
        let location = location.unwrap();
        let url = url::Url::parse(&location).unwrap();
        assert_eq!(url.host_str(), Some("www.va.gov"), "{suffix} -> {location}");
        assert_eq!(url.scheme(), "https");
        assert!(url.username().is_empty() && url.password().is_none(), "{suffix} -> {location}");
        assert!(!location.starts_with("https://www.va.gov//"), "{suffix} -> {location}");
    }
}

#[tokio::test]
async fn click_tracking_is_off_by_default() {
    let (app, notify, _bgs) = wired(&[]).await;
    let id = queue_for(&app, PARTICIPANT_ID).await;
    app.deliver_all().await;
    let request = notify.accepted().into_iter().find(|r| r.reference() == Some(id.to_string().as_str())).unwrap();
    assert_eq!(request.body.unwrap()["personalisation"]["host"], "www.va.gov");
}

#[tokio::test]
async fn a_click_after_retention_deleted_the_notification_redirects_and_records_nothing() {
    let (app, notify, _bgs) = wired(CLICKS_ON).await;
    let id = queue_for(&app, PARTICIPANT_ID).await;
    app.deliver_all().await;
    let token = token_in(&notify, id);
    // As retention's purge would: the row goes, the signed link in the Veteran's inbox stays.
    sqlx::query("delete from notifications where id = $1").bind(id).execute(&app.db).await.unwrap();

    let unique = r#"ebg_clicks_unique_total{channel="email"}"#;
    let counted = r#"ebg_clicks_total{kind="counted",channel="email"}"#;
    // A click that recorded nothing has no notification, so its channel is `unknown`.
    let unrecorded = r#"ebg_clicks_total{kind="counted",channel="unknown"}"#;
    let before = [app.metric(unique).await, app.metric(counted).await, app.metric(unrecorded).await];
    let (status, location) = raw_get(&app, "GET", &format!("/c/{token}/track-claims"), BROWSER).await;
    assert_eq!(status, 302);
    assert_eq!(location.as_deref(), Some("https://www.va.gov/track-claims"));
    assert_eq!(click_row(&app, id).await, None);
    let after = [app.metric(unique).await, app.metric(counted).await, app.metric(unrecorded).await];
    assert_eq!(after, [before[0], before[1], before[2] + 1.0]);
}

#[tokio::test]
async fn clicks_count_under_the_channel_of_their_notification() {
    let settings: Vec<(&str, String)> = CLICKS_ON.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    let w = wired_with(&settings).await;
    enable(&w.app, SMS_FEATURE).await;
    let email = queue_for(&w.app, PARTICIPANT_ID).await;
    let sms = single(post(&w.app, SMS_PATH, PARTICIPANT_ID, json!({"template_id": SMS_TEMPLATE}), None).await).await;
    w.app.deliver_all().await;
    let series = [
        r#"ebg_clicks_unique_total{channel="email"}"#,
        r#"ebg_clicks_unique_total{channel="sms"}"#,
        r#"ebg_clicks_total{kind="counted",channel="email"}"#,
        r#"ebg_clicks_total{kind="counted",channel="sms"}"#,
        r#"ebg_clicks_total{kind="scanner",channel="sms"}"#,
    ];
    let before = metric_values(&w.app, &series).await;
    // Both channels carry the tracked link; a person clicks the SMS twice (one unique click), a scanner
    // opens it once, and the person clicks the email once.
    let (sms_token, email_token) = (token_in(&w.notify, sms), token_in(&w.notify, email));
    for (token, agent) in
        [(&sms_token, BROWSER), (&sms_token, BROWSER), (&sms_token, "Proofpoint"), (&email_token, BROWSER)]
    {
        assert_eq!(raw_get(&w.app, "GET", &format!("/c/{token}/claims"), agent).await.0, 302);
    }
    assert_eq!((click_row(&w.app, sms).await, click_row(&w.app, email).await), (Some((3, 2)), Some((1, 1))));
    let delta: Vec<f64> = metric_values(&w.app, &series).await.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(delta, [1.0, 1.0, 1.0, 2.0, 1.0], "{series:?}");
    // Push carries no link: no click series of its own.
    assert!(!w.app.metrics().await.contains(r#"ebg_clicks_unique_total{channel="push"}"#));
}
