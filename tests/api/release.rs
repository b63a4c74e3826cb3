//! Release of suppressed mail for every channel's gate (SPEC §4.4, CHANNELS.md §4): SMS and push rows whose
//! ICN-keyed toggle was off are released through MPI, over the real app, real PostgreSQL, the fake VA
//! Notify, BGS and MPI over mutual TLS (`helpers::wired`). The email release is in `admin.rs`.

use ebg_notify::toggles::actor_in_percentage;
use ebg_testkit::va_notify::Endpoint;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    ADMIN_TOKEN, ICN, PARTICIPANT_ID, PUSH_FEATURE, PUSH_PATH, PUSH_TEMPLATE, SMS_FEATURE, SMS_PATH, SMS_TEMPLATE,
    TEMPLATE_ID, TestApp, app, enable, post, row, single, window_around_now, wired, wired_on, wired_with,
};

const ALL_PATH: &str = "/v0/event_bus_gateway/send_notifications";
const UNIVERSAL_LINK: &str = "event_bus_gateway_letter_ready_email_universal_link";

/// POSTs `body` to the admin path `path` (an operator's write, with its reason).
async fn admin_post(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.client
        .post(format!("{}{path}", app.address))
        .bearer_auth(ADMIN_TOKEN)
        .header("X-Reason", "rollback undone")
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// POSTs a release; the answer's status and JSON body.
async fn release(app: &TestApp, body: Value) -> (u16, Value) {
    let response = admin_post(app, "/admin/notifications/release", body).await;
    (response.status().as_u16(), response.json().await.unwrap())
}

/// A release of `feature`'s suppressed rows of the last hour (`to` open: everything recorded so far).
fn range(feature: &str, dry_run: bool) -> Value {
    json!({"feature": feature, "from": chrono::Utc::now() - chrono::Duration::hours(1), "dry_run": dry_run})
}

/// Changes a gate through the Flipper API, as an operator would (audited, snapshot refreshed).
async fn flipper(app: &TestApp, feature: &str, gate: &str, body: Value) {
    let response = admin_post(app, &format!("/flipper/api/features/{feature}/{gate}"), body).await;
    assert!(response.status().is_success(), "{}", response.status());
}

/// The first ICN-shaped id (`10NNNNNNNNV…`) from `start` that `keep` accepts.
fn icn_where(start: u64, keep: impl Fn(&str) -> bool) -> String {
    (start..).map(|n| format!("10{:08}V{:06}", n, n % 1_000_000)).find(|icn| keep(icn)).unwrap()
}

/// (status, status_reason) of every row of `channel`, oldest first.
async fn states(app: &TestApp, channel: &str) -> Vec<(String, Option<String>)> {
    sqlx::query_as("select status, status_reason from notifications where channel = $1 order by created_at, id")
        .bind(channel)
        .fetch_all(&app.db)
        .await
        .unwrap()
}

fn suppressed(reason: &str) -> (String, Option<String>) {
    ("suppressed".to_owned(), Some(reason.to_owned()))
}

/// The release entries of `feature`'s audit log, newest first.
async fn releases_audited(app: &TestApp, feature: &str) -> Vec<Value> {
    let log: Value = app
        .client
        .get(format!("{}/admin/features/{feature}/audit", app.address))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    log["entries"].as_array().unwrap().iter().filter(|e| e["operation"] == "release_suppressed").cloned().collect()
}

#[tokio::test]
async fn suppressed_sms_are_released_for_the_icns_the_gate_enables_now_and_sent_once() {
    let w = wired().await;
    // Two more Veterans: one inside the 50% cohort of the SMS gate (by ICN), one outside.
    let (inside, outside) = ("600070001", "600070002");
    let icn_in = icn_where(1, |icn| actor_in_percentage(SMS_FEATURE, icn, 50.0));
    let icn_out = icn_where(1, |icn| !actor_in_percentage(SMS_FEATURE, icn, 50.0));
    w.mpi.add_patient(inside, &icn_in, Some("ANN"));
    w.mpi.add_patient(outside, &icn_out, Some("BOB"));

    // SMS toggle off. The UAT Veteran's letter comes through send_notifications (email + SMS), then again
    // under another Idempotency-Key (so accept's duplicate rule did not catch it), and another letter
    // through send_sms; the others' through send_sms.
    let both = json!({"email_template_id": TEMPLATE_ID, "sms_template_id": SMS_TEMPLATE});
    assert_eq!(post(&w.app, ALL_PATH, PARTICIPANT_ID, both, None).await.status(), 200);
    let again = json!({"template_id": SMS_TEMPLATE});
    single(post(&w.app, SMS_PATH, PARTICIPANT_ID, again, Some("evt-2")).await).await;
    let other_letter = json!({"template_id": Uuid::new_v4()});
    single(post(&w.app, SMS_PATH, PARTICIPANT_ID, other_letter, None).await).await;
    for participant in [inside, outside] {
        single(post(&w.app, SMS_PATH, participant, json!({"template_id": SMS_TEMPLATE}), None).await).await;
    }
    w.app.deliver_all().await;
    assert_eq!(states(&w.app, "sms").await, vec![suppressed("toggle_disabled"); 5], "the worker decided by ICN");
    assert_eq!(w.notify.requests_to(Endpoint::Email).len(), 1, "the email part went at once");

    // Turned on for the UAT Veteran's ICN (actor gate) and 50% of actors.
    flipper(&w.app, SMS_FEATURE, "actors", json!({"flipper_id": ICN})).await;
    flipper(&w.app, SMS_FEATURE, "percentage_of_actors", json!({"percentage": "50"})).await;

    let expected = json!({
        "dry_run": true, "channel": "sms", "suppressed": 5, "released": 3, "still_disabled": 1, "duplicates": 1,
        "unresolved": 0, "unresolved_reasons": {},
    });
    assert_eq!(release(&w.app, range(SMS_FEATURE, true)).await, (200, expected));
    assert_eq!(states(&w.app, "sms").await, vec![suppressed("toggle_disabled"); 5], "a dry run changes nothing");
    assert!(releases_audited(&w.app, SMS_FEATURE).await.is_empty(), "a dry run is not audited");

    let (status, outcome) = release(&w.app, range(SMS_FEATURE, false)).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!((outcome["released"].as_u64(), outcome["still_disabled"].as_u64()), (Some(3), Some(1)), "{outcome}");
    w.app.deliver_all().await;
    let sent = ("sent".to_owned(), None);
    let after = vec![sent.clone(), suppressed("toggle_disabled"), sent.clone(), sent, suppressed("toggle_disabled")];
    assert_eq!(states(&w.app, "sms").await, after, "the first of the burst, the other letter, the 50% cohort");
    let sms_calls = w.notify.requests_to(Endpoint::Sms);
    assert_eq!(sms_calls.len(), 3, "VA Notify's SMS endpoint, once per released row");
    assert!(sms_calls.iter().all(|r| r.status == 201), "VA's SMS schema accepted every body");
    assert_eq!(w.notify.requests_to(Endpoint::Email).len(), 1, "an SMS release sends no email");

    // Releasing twice sends once.
    let (_, again) = release(&w.app, range(SMS_FEATURE, false)).await;
    assert_eq!((again["suppressed"].as_u64(), again["released"].as_u64()), (Some(2), Some(0)), "{again}");
    w.app.deliver_all().await;
    assert_eq!(w.notify.requests_to(Endpoint::Sms).len(), 3);

    // One MPI lookup per person for the worker's tries and the release together: the release asks the
    // worker's own (cached) resolver.
    for participant in [PARTICIPANT_ID, inside, outside] {
        assert_eq!(w.mpi.lookups_for(participant), 1, "{participant}");
    }
    let audited = releases_audited(&w.app, SMS_FEATURE).await;
    assert_eq!(audited.len(), 2, "each real release is audited on the SMS feature");
    let counts: Value = serde_json::from_str(audited[1]["value"].as_str().unwrap()).unwrap();
    assert_eq!((counts["channel"].as_str(), counts["released"].as_u64()), (Some("sms"), Some(3)), "{counts}");
    assert_eq!(audited[1]["reason"], "rollback undone");
}

#[tokio::test]
async fn participants_mpi_gives_no_icn_for_at_release_stay_suppressed_and_are_counted() {
    let w = wired().await;
    let (forgotten, deceased) = ("600070011", "600070012");
    w.mpi.add_patient(forgotten, "1011111111V111111", Some("ANN"));
    w.mpi.add_patient(deceased, "1022222222V222222", Some("BOB"));
    for participant in [PARTICIPANT_ID, forgotten, deceased] {
        single(post(&w.app, SMS_PATH, participant, json!({"template_id": SMS_TEMPLATE}), None).await).await;
    }
    w.app.deliver_all().await;
    assert_eq!(states(&w.app, "sms").await, vec![suppressed("toggle_disabled"); 3]);
    let database = w.app.database_url.clone();
    let guard = w.app.stop().await;

    // Released later by a fresh process (no cache), when MPI no longer knows one participant (GCID01) and
    // knows the other as deceased.
    let w = wired_on(&[], Some(&database)).await;
    w.mpi.add_deceased(deceased, "1022222222V222222", "2026-11-30");
    enable(&w.app, SMS_FEATURE).await;
    let (status, outcome) = release(&w.app, range(SMS_FEATURE, false)).await;
    assert_eq!(status, 200, "{outcome}");
    let expected = json!({
        "dry_run": false, "channel": "sms", "suppressed": 3, "released": 1, "still_disabled": 0, "duplicates": 0,
        "unresolved": 2, "unresolved_reasons": {"deceased": 1, "person_not_found": 1},
    });
    assert_eq!(outcome, expected);
    w.app.deliver_all().await;
    let left = states(&w.app, "sms").await;
    assert_eq!(left.iter().filter(|s| **s == suppressed("toggle_disabled")).count(), 2, "never released blindly");
    assert_eq!(w.notify.requests_to(Endpoint::Sms).len(), 1, "only the resolved Veteran's SMS");
    assert_eq!(w.mpi.lookups_for(forgotten) + w.mpi.lookups_for(deceased), 2, "each asked once");
    drop(w);
    drop(guard);
}

#[tokio::test]
async fn a_suppressed_push_is_released_by_icn_and_pushed_once() {
    let w = wired().await;
    let push = single(post(&w.app, PUSH_PATH, PARTICIPANT_ID, json!({"template_id": PUSH_TEMPLATE}), None).await).await;
    w.app.deliver_all().await;
    assert_eq!(row(&w.app, push).await.2.as_deref(), Some("toggle_disabled"));
    flipper(&w.app, PUSH_FEATURE, "actors", json!({"flipper_id": ICN})).await;

    let (_, dry) = release(&w.app, range(PUSH_FEATURE, true)).await;
    assert_eq!((dry["channel"].as_str(), dry["released"].as_u64()), (Some("push"), Some(1)), "{dry}");
    assert_eq!(row(&w.app, push).await.1, "suppressed", "a dry run changes nothing");
    let (_, outcome) = release(&w.app, range(PUSH_FEATURE, false)).await;
    assert_eq!(outcome["released"], 1, "{outcome}");
    w.app.deliver_all().await;
    assert_eq!(row(&w.app, push).await.1, "sent");
    let pushes = w.notify.requests_to(Endpoint::Push);
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].body.as_ref().unwrap()["recipient_identifier"], json!({"id_type": "ICN", "id_value": ICN}));

    let (_, again) = release(&w.app, range(PUSH_FEATURE, false)).await;
    assert_eq!((again["suppressed"].as_u64(), again["released"].as_u64()), (Some(0), Some(0)), "{again}");
    w.app.deliver_all().await;
    assert_eq!(w.notify.requests_to(Endpoint::Push).len(), 1, "releasing twice pushes once");
    // The email gate releases email rows only: the push row is not among them.
    let (_, email) = release(&w.app, range("event_bus_gateway_emails_enabled", false)).await;
    assert_eq!((email["channel"].as_str(), email["suppressed"].as_u64()), (Some("email"), Some(0)), "{email}");
}

#[tokio::test]
async fn an_sms_blocked_in_quiet_hours_is_released_once_the_window_is_off() {
    let (settings, _) = window_around_now("block");
    let w = wired_with(&settings).await;
    enable(&w.app, SMS_FEATURE).await;
    let sms = single(post(&w.app, SMS_PATH, PARTICIPANT_ID, json!({"template_id": SMS_TEMPLATE}), None).await).await;
    w.app.deliver_all().await;
    assert_eq!(w.app.status_of(sms).await, suppressed("sms_quiet_hours"));

    // Released while the window still holds, the worker asks the quiet hours again: suppressed again.
    let (_, inside) = release(&w.app, range(SMS_FEATURE, false)).await;
    assert_eq!(inside["released"], 1, "{inside}");
    w.app.deliver_all().await;
    assert_eq!(w.app.status_of(sms).await, suppressed("sms_quiet_hours"));
    assert!(w.notify.requests_to(Endpoint::Sms).is_empty());
    let database = w.app.database_url.clone();
    let guard = w.app.stop().await;

    // Quiet hours off (the tests' default): released like a toggle_disabled row, and sent once.
    let w = wired_on(&[], Some(&database)).await;
    let (_, outcome) = release(&w.app, range(SMS_FEATURE, false)).await;
    assert_eq!(outcome["released"], 1, "{outcome}");
    w.app.deliver_all().await;
    assert_eq!(w.app.status_of(sms).await.0, "sent");
    let (_, again) = release(&w.app, range(SMS_FEATURE, false)).await;
    assert_eq!(again["released"], 0, "{again}");
    w.app.deliver_all().await;
    assert_eq!(w.notify.requests_to(Endpoint::Sms).len(), 1);
    drop(w);
    drop(guard);
}

#[tokio::test]
async fn a_feature_that_gates_no_channel_is_refused_naming_feature() {
    let app = app().spawn().await;
    for feature in [UNIVERSAL_LINK, "no_such_feature"] {
        let (status, body) = release(&app, range(feature, false)).await;
        assert_eq!(status, 400, "{feature}: {body}");
        assert_eq!(body["errors"][0]["source"]["parameter"], "feature", "{body}");
        let detail = body["errors"][0]["detail"].as_str().unwrap();
        assert!(detail.contains(SMS_FEATURE) && !detail.contains(UNIVERSAL_LINK), "names the gates: {detail}");
    }
    let audited: i64 = sqlx::query_scalar("select count(*) from feature_audit where operation = 'release_suppressed'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(audited, 0);
    // Without `feature`, the emails toggle decides, as before.
    let (status, body) = release(&app, json!({"from": chrono::Utc::now() - chrono::Duration::hours(1)})).await;
    assert_eq!((status, body["channel"].as_str()), (200, Some("email")), "{body}");
}
