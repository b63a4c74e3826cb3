//! `/metrics` (SPEC §9) end to end: requests through the fake VA Notify, signed and bearer callbacks, a
//! resend, tracked clicks; then `/metrics` and the rollout report must agree with each other and with
//! what was sent, and no label may carry an id, an email or free text.
//!
//! Counters are process-wide, so the test compares deltas; nextest (the project's runner) gives each test
//! its own process, so no other test moves them meanwhile.

use std::collections::BTreeMap;

use ebg_testkit::va_notify::Reply;
use serde_json::Value;

use crate::callbacks::{callback_body, post_bearer, post_signed, va_id, wired};
use crate::clicks::{CLICKS_ON, raw_get, token_in};
use crate::helpers::*;

type Series = BTreeMap<String, f64>;

/// Every series of the exposition: `name{labels}` -> value.
fn parse(text: &str) -> Series {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(k, v)| (k.to_owned(), v.parse().unwrap_or(f64::NAN))))
        .collect()
}

/// Labels of a series key: `name{a="x",b="y"}` -> [(a, x), (b, y)], honouring escaped quotes.
fn labels(key: &str) -> Vec<(String, String)> {
    let Some((_, rest)) = key.split_once('{') else { return Vec::new() };
    let mut out = Vec::new();
    let mut chars = rest.trim_end_matches('}').chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.is_empty() {
            break;
        }
        chars.next(); // opening quote
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.extend(chars.next()),
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((name.trim_start_matches(',').to_owned(), value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    out
}

/// Sum of the series of `name` whose labels include every `filter` pair.
fn sum(series: &Series, name: &str, filter: &[(&str, &str)]) -> f64 {
    series
        .iter()
        .filter(|(k, _)| k.split('{').next() == Some(name))
        .filter(|(k, _)| {
            let l = labels(k);
            filter.iter().all(|(fk, fv)| l.iter().any(|(k, v)| k == fk && v == fv))
        })
        .map(|(_, v)| v)
        .sum()
}

fn delta(before: &Series, after: &Series, name: &str, filter: &[(&str, &str)]) -> f64 {
    sum(after, name, filter) - sum(before, name, filter)
}

/// The failure statuses that make up the error rate (README, "Reading the report").
const ERROR_STATUSES: [&str; 4] = ["failed", "dead", "permanent_failure", "temporary_failure"];

#[tokio::test]
async fn metrics_and_the_report_agree_with_what_was_sent() {
    // Five sends are judged (report.min_sample 5), so the verdict is checked too.
    let settings: Vec<(&str, &str)> = CLICKS_ON.iter().copied().chain([("EBG_REPORT__MIN_SAMPLE", "5")]).collect();
    let (app, notify, _bgs) = wired(&settings).await;
    sqlx::query(
        "insert into feature_audit (at, feature_key, operation, before, after, actor)
         values (now() - interval '1 minute', 'event_bus_gateway_emails_enabled', 'enable', '{}',
                 '{\"boolean\": true, \"actors\": [], \"percentage_of_actors\": 0, \"paused\": false}', 'ops')",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let before = parse(&app.metrics().await);

    // Five requests; VA Notify refuses one (400 -> failed).
    let ids: Vec<_> = futures_ids(&app).await;
    notify.script([Reply::Created, Reply::Created, Reply::Created, Reply::Created, Reply::BadRequest]);
    app.deliver_all().await;
    let statuses: Vec<String> = {
        let mut s = Vec::new();
        for id in &ids {
            s.push(app.status_of(*id).await.0);
        }
        s
    };
    assert_eq!(statuses.iter().filter(|s| *s == "sent").count(), 4, "{statuses:?}");
    let sent: Vec<_> = ids.iter().zip(&statuses).filter(|(_, s)| *s == "sent").map(|(id, _)| *id).collect();

    // Callbacks: delivered (signed), delivered (bearer), permanent failure, and a Retryable temporary
    // failure that is resent and then delivered.
    post_signed(&app, &notify, callback_body(Some(va_id(&app, sent[0]).await), Some(sent[0]), "delivered", None)).await;
    post_bearer(&app, callback_body(Some(va_id(&app, sent[1]).await), Some(sent[1]), "delivered", None)).await;
    post_bearer(
        &app,
        callback_body(Some(va_id(&app, sent[2]).await), Some(sent[2]), "permanent-failure", Some("Bounce")),
    )
    .await;
    let retryable = Some("Retryable - Unable to deliver at this time");
    post_signed(
        &app,
        &notify,
        callback_body(Some(va_id(&app, sent[3]).await), Some(sent[3]), "temporary-failure", retryable),
    )
    .await;
    app.deliver_all().await;
    post_signed(&app, &notify, callback_body(Some(va_id(&app, sent[3]).await), Some(sent[3]), "delivered", None)).await;

    // Clicks: a person clicks the first mail twice; the second is only opened by HEAD and a scanner.
    let browser = "Mozilla/5.0 (Windows NT 10.0; Win64; x64)";
    for _ in 0..2 {
        assert_eq!(raw_get(&app, "GET", &format!("/c/{}/claims", token_in(&notify, sent[0])), browser).await.0, 302);
    }
    raw_get(&app, "HEAD", &format!("/c/{}/claims", token_in(&notify, sent[1])), browser).await;
    raw_get(&app, "GET", &format!("/c/{}/claims", token_in(&notify, sent[1])), "Mimecast Scanner").await;
    raw_get(&app, "GET", "/c/not-a-token/claims", browser).await;

    let after = parse(&app.metrics().await);
    let report: Value = app
        .client
        .get(format!("{}/admin/rollout/report", app.address))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stage = &report["stages"][0];
    assert_eq!(report["stages"].as_array().unwrap().len(), 1, "{report:#}");

    // What was sent: 5 requests, 4 accepted by VA (one resent), 3 delivered, 2 errors (400, bounce).
    assert_eq!(notify.requests_total(), 6);
    let expect = |field: &str, n: i64| assert_eq!(stage[field], n, "report {field}: {stage:#}");
    expect("requests", 5);
    expect("attempted", 5);
    expect("sent", 4);
    expect("delivered", 3);
    expect("failed", 2);
    expect("unique_clicks", 1);
    expect("unique_participants", 5);
    assert_eq!(stage["error_rate"], 0.4);
    assert_eq!(stage["verdict"], "fail");

    // /metrics agrees with the report.
    let d = |name: &str, filter: &[(&str, &str)]| delta(&before, &after, name, filter);
    assert_eq!(d("ebg_requests_total", &[("api", "send_email"), ("outcome", "accepted")]), 5.0);
    assert_eq!(d("ebg_delivery_attempted_total", &[]), 5.0);
    assert_eq!(d("ebg_deliveries_total", &[("status", "sent")]), 4.0);
    assert_eq!(d("ebg_deliveries_total", &[("status", "delivered")]), 3.0);
    let errors: f64 = ERROR_STATUSES.iter().map(|s| d("ebg_deliveries_total", &[("status", s)])).sum();
    assert_eq!(errors, 2.0);
    assert_eq!(errors / d("ebg_delivery_attempted_total", &[]), stage["error_rate"].as_f64().unwrap());
    assert_eq!(d("ebg_resends_total", &[]), 1.0);
    assert_eq!(d("ebg_retries_total", &[("reason", "retryable_temporary_failure")]), 1.0);
    assert_eq!(d("ebg_callbacks_total", &[("status", "delivered")]), 3.0);
    assert_eq!(d("ebg_callbacks_total", &[]), 5.0);
    assert_eq!(d("ebg_clicks_unique_total", &[("channel", "email")]), 1.0);
    assert_eq!(d("ebg_clicks_total", &[("kind", "counted"), ("channel", "email")]), 2.0);
    assert_eq!(d("ebg_clicks_total", &[("kind", "head")]), 1.0);
    assert_eq!(d("ebg_clicks_total", &[("kind", "scanner")]), 1.0);
    assert_eq!(d("ebg_clicks_total", &[("kind", "invalid")]), 1.0);
    assert_eq!(d("ebg_va_notify_requests_total", &[]), 6.0);
    assert!(d("ebg_toggle_evaluations_total", &[("result", "enabled")]) >= 5.0);

    // Every metric SPEC §9 names is exposed.
    for name in [
        "ebg_requests_total",
        "ebg_http_request_duration_seconds_bucket",
        "ebg_va_notify_requests_total",
        "ebg_va_notify_request_duration_seconds_bucket",
        "ebg_deliveries_total",
        "ebg_callbacks_total",
        "ebg_clicks_total",
        "ebg_clicks_unique_total",
        "ebg_retries_total",
        "ebg_dead_letters_total",
        "ebg_queue_depth",
        "ebg_queue_oldest_due_age_seconds",
        "ebg_toggle_evaluations_total",
        "ebg_delivery_attempted_total",
    ] {
        assert!(after.keys().any(|k| k.split('{').next() == Some(name)), "missing {name}");
    }
    assert_bounded_labels(&after);
}

async fn futures_ids(app: &TestApp) -> Vec<uuid::Uuid> {
    let mut ids = Vec::new();
    for n in 1..=5 {
        ids.push(queue_for(app, &format!("60000000{n}")).await);
    }
    ids
}

/// Every label value must come from a finite, known set: no UUIDs, no participant ids or other long
/// numbers, no emails, no free text.
fn assert_bounded_labels(series: &Series) {
    let uuid_like = |v: &str| v.len() >= 32 && v.chars().filter(|c| c.is_ascii_hexdigit()).count() >= 32;
    let long_number = |v: &str| {
        v.chars()
            .fold((0, 0), |(run, max), c| if c.is_ascii_digit() { (run + 1, max.max(run + 1)) } else { (0, max) })
            .1
            >= 6
    };
    let known: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("api", &["send_email", "send_sms", "send_push", "send_notifications", "other"][..]),
        // `unknown`: a send_notifications request refused before its channels were read; a click that
        // recorded nothing.
        ("channel", &["email", "sms", "push", "other", "unknown"][..]),
        ("state", &["queued", "retry_wait", "sending"][..]),
        // Toggle evaluations, then reconciliations of calls with unknown outcome.
        ("result", &["enabled", "disabled", "adopted", "absent", "failed", "wait"][..]),
        ("resolution", &["absent", "withdrawn", "kept"][..]),
        ("kind", &["counted", "head", "scanner", "invalid"][..]),
        ("status", &[][..]),
        ("table", &["notification_events", "clicks", "notifications"][..]),
    ]);
    for key in series.keys() {
        for (name, value) in labels(key) {
            assert!(!uuid_like(&value), "{key}: {name} looks like an id");
            assert!(!long_number(&value), "{key}: {name} holds a long number");
            assert!(!value.contains('@'), "{key}: {name} holds an email");
            // Feature keys are vets-api's names (up to 52 characters), bounded by the registrations instead.
            let max_len = if name == "feature" { 64 } else { 48 };
            assert!(value.len() <= max_len && !value.contains(' '), "{key}: {name} looks like free text");
            if name == "feature" {
                let registered = ebg_notify::toggles::KNOWN_FEATURES.contains(&value.as_str());
                assert!(registered || value == "other", "{key}: unregistered feature {value}");
            }
            if let Some(allowed) = known.get(name.as_str()).filter(|a| !a.is_empty()) {
                assert!(allowed.contains(&value.as_str()), "{key}: unexpected {name}={value}");
            }
            if name == "route" {
                assert!(value.starts_with('/') || value == "unmatched", "{key}: route {value}");
            }
        }
    }
}

#[tokio::test]
async fn cache_sizes_are_exposed_as_gauges() {
    let (app, _notify, _bgs) = wired_app(&[]).await;
    queue_for(&app, PARTICIPANT_ID).await;
    app.deliver_all().await;
    for cache in ["contacts", "tokens"] {
        let entries = app.metric(&format!("ebg_cache_entries{{cache=\"{cache}\"}}")).await;
        let bytes = app.metric(&format!("ebg_cache_bytes{{cache=\"{cache}\"}}")).await;
        assert_eq!(entries, 1.0, "{cache} entries");
        assert!(bytes >= ebg_notify::memory::ENTRY_OVERHEAD_BYTES as f64, "{cache} bytes {bytes}");
    }
}
