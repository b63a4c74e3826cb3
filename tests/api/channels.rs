//! send_sms, send_push and send_notifications end to end (CHANNELS.md §1–§4): the real app, real
//! PostgreSQL, the fake VA Notify (VA's schemas, separate push key), the fake BGS and the fake MPI over
//! real mutual TLS (the wiring is `helpers::wired`).

use ebg_testkit::va_notify::Endpoint;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    ICN, PARTICIPANT_ID, PUSH_FEATURE, PUSH_PATH, PUSH_TEMPLATE, SMS_FEATURE, SMS_PATH, SMS_TEMPLATE, TEMPLATE_ID,
    TestApp, UNKNOWN_TO_MPI, claims, enable, post, row, sign, single, token_for_every_route, wired,
};

const ALL_PATH: &str = "/v0/event_bus_gateway/send_notifications";
const NO_TEMPLATES: &str = r#"{"errors":[{"title":"Bad Request","detail":"At least one of email_template_id, push_template_id, or sms_template_id is required","status":"400"}]}"#;

fn token(participant: &str) -> String {
    token_for_every_route(participant)
}

/// The (channel → id, status) of a send_notifications JSON answer.
async fn channels(response: reqwest::Response) -> Vec<(String, Uuid, String)> {
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["channel"].as_str().unwrap().to_owned(),
                n["id"].as_str().unwrap().parse().unwrap(),
                n["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn rows(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from notifications").fetch_one(&app.db).await.unwrap()
}

#[tokio::test]
async fn send_sms_and_send_push_deliver_with_exactly_vas_bodies() {
    let w = wired().await;
    enable(&w.app, SMS_FEATURE).await;
    enable(&w.app, PUSH_FEATURE).await;

    // Empty 200 without Accept: JSON (vets-api parity), template in the query string this time.
    let plain = w
        .app
        .client
        .post(format!("{}{SMS_PATH}", w.app.address))
        .bearer_auth(token(PARTICIPANT_ID))
        .query(&[("template_id", SMS_TEMPLATE)])
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);
    assert!(plain.text().await.unwrap().is_empty());
    // A form body, with an unknown key that is ignored.
    let push = w
        .app
        .client
        .post(format!("{}{PUSH_PATH}", w.app.address))
        .bearer_auth(token(PARTICIPANT_ID))
        .header("Accept", "application/json")
        .form(&[("template_id", PUSH_TEMPLATE), ("unknown", "ignored")])
        .send()
        .await
        .unwrap();
    let push = single(push).await;
    let sms: Uuid =
        sqlx::query_scalar("select id from notifications where channel = 'sms'").fetch_one(&w.app.db).await.unwrap();
    w.app.deliver_all().await;

    assert_eq!(row(&w.app, sms).await, ("sms".into(), "sent".into(), None, true, SMS_TEMPLATE.into()));
    assert_eq!(
        row(&w.app, push).await,
        ("push".into(), "sent".into(), Some("push_accepted".into()), false, PUSH_TEMPLATE.into()),
        "a push ends sent with no VA Notify id"
    );
    let sms_calls = w.notify.requests_to(Endpoint::Sms);
    assert_eq!(sms_calls.len(), 1);
    assert_eq!(
        sms_calls[0].body,
        Some(json!({
            "template_id": SMS_TEMPLATE,
            "recipient_identifier": {"id_type": "PID", "id_value": PARTICIPANT_ID},
            "personalisation": {"host": "www.va.gov"},
            "reference": sms.to_string(),
        }))
    );
    let push_calls = w.notify.requests_to(Endpoint::Push);
    assert_eq!(push_calls.len(), 1);
    assert!(push_calls[0].auth_ok, "the push key is used for push");
    assert_eq!(
        push_calls[0].body,
        Some(json!({
            "mobile_app": "VA_FLAGSHIP_APP",
            "template_id": PUSH_TEMPLATE,
            "recipient_identifier": {"id_type": "ICN", "id_value": ICN},
            "personalisation": {},
        }))
    );
    assert!(w.notify.requests_to(Endpoint::Email).is_empty());
    assert_eq!(w.mpi.lookups_for(PARTICIPANT_ID), 1, "the ICN is looked up once per person (cached)");
    let metrics = w.app.metrics().await;
    assert!(
        metrics.contains(r#"ebg_deliveries_total{status="sent",reason="push_accepted",channel="push"}"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"ebg_requests_total{api="send_sms",outcome="accepted",channel="sms"}"#), "{metrics}");
}

#[tokio::test]
async fn single_channel_routes_check_their_template_ids_and_scopes() {
    let w = wired().await;
    let missing = post(&w.app, SMS_PATH, PARTICIPANT_ID, json!({}), None).await;
    assert_eq!(missing.status(), 400);
    let not_uuid = post(&w.app, SMS_PATH, PARTICIPANT_ID, json!({"template_id": "letter-ready-sms"}), None).await;
    assert_eq!(not_uuid.status(), 400);
    let body: Value = not_uuid.json().await.unwrap();
    assert_eq!(body["errors"][0]["source"]["parameter"], "template_id");
    let number = post(&w.app, PUSH_PATH, PARTICIPANT_ID, json!({"template_id": 12}), None).await;
    assert_eq!(number.status(), 400, "a push template id is a string");
    let missing_push = post(&w.app, PUSH_PATH, PARTICIPANT_ID, json!({"template_id": "  "}), None).await;
    assert_eq!(missing_push.status(), 400);

    // Scope = the exact URL of each route: a send_email token does not open send_sms.
    let email_only = w
        .app
        .client
        .post(format!("{}{SMS_PATH}", w.app.address))
        .bearer_auth(sign(&claims(PARTICIPANT_ID)))
        .json(&json!({"template_id": SMS_TEMPLATE}))
        .send()
        .await
        .unwrap();
    assert_eq!(email_only.status(), 401);
    assert_eq!(rows(&w.app).await, 0);
}

#[tokio::test]
async fn send_notifications_records_each_channel_given_and_refuses_none_with_vets_apis_body() {
    let w = wired().await;
    enable(&w.app, SMS_FEATURE).await;
    enable(&w.app, PUSH_FEATURE).await;

    let none = w
        .app
        .client
        .post(format!("{}{ALL_PATH}", w.app.address))
        .bearer_auth(token(PARTICIPANT_ID))
        .json(&json!({"template_id": TEMPLATE_ID}))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 400);
    assert_eq!(none.text().await.unwrap(), NO_TEMPLATES, "exactly vets-api's body");
    assert_eq!(rows(&w.app).await, 0);

    // Each subset, from distinct participants' templates so no duplicate window interferes.
    let subsets: [&[&str]; 7] = [
        &["email"],
        &["sms"],
        &["push"],
        &["email", "sms"],
        &["email", "push"],
        &["sms", "push"],
        &["email", "sms", "push"],
    ];
    let mut all = Vec::new();
    for (i, subset) in subsets.iter().enumerate() {
        let mut body = json!({});
        if subset.contains(&"email") {
            body["email_template_id"] = json!(Uuid::new_v4());
        }
        if subset.contains(&"sms") {
            body["sms_template_id"] = json!(Uuid::new_v4());
        }
        if subset.contains(&"push") {
            body["push_template_id"] = json!(format!("{PUSH_TEMPLATE}{i}"));
        }
        let answered = channels(post(&w.app, ALL_PATH, PARTICIPANT_ID, body, None).await).await;
        let names: Vec<&str> = answered.iter().map(|(c, ..)| c.as_str()).collect();
        assert_eq!(names, subset.to_vec());
        assert!(answered.iter().all(|(_, _, status)| status == "queued"), "{answered:?}");
        all.extend(answered);
    }
    assert_eq!(rows(&w.app).await, 12);
    w.app.deliver_all().await;
    for (channel, id, _) in &all {
        let (_, status, ..) = row(&w.app, *id).await;
        assert_eq!(status, "sent", "{channel}");
    }
    assert_eq!(w.notify.requests_to(Endpoint::Email).len(), 4);
    assert_eq!(w.notify.requests_to(Endpoint::Sms).len(), 4);
    assert_eq!(w.notify.requests_to(Endpoint::Push).len(), 4);
    assert!(w.notify.requests().iter().all(|r| r.status == 201), "VA's schemas accepted every body");
    // Counted once per channel a request asked for, with that channel's outcome: each channel was in 4 requests.
    for channel in ["email", "sms", "push"] {
        let series =
            format!(r#"ebg_requests_total{{api="send_notifications",outcome="accepted",channel="{channel}"}}"#);
        assert_eq!(w.app.metric(&series).await, 4.0, "{series}");
    }
}

#[tokio::test]
async fn a_person_mpi_does_not_know_skips_sms_and_push_while_the_email_goes() {
    let w = wired().await;
    enable(&w.app, SMS_FEATURE).await;
    enable(&w.app, PUSH_FEATURE).await;
    let body =
        json!({"email_template_id": TEMPLATE_ID, "sms_template_id": SMS_TEMPLATE, "push_template_id": PUSH_TEMPLATE});
    let answered = channels(post(&w.app, ALL_PATH, UNKNOWN_TO_MPI, body, None).await).await;
    w.app.deliver_all().await;

    let (email, sms, push) = (answered[0].1, answered[1].1, answered[2].1);
    assert_eq!(row(&w.app, email).await.1, "sent");
    for id in [sms, push] {
        let (_, status, reason, ..) = row(&w.app, id).await;
        assert_eq!((status.as_str(), reason.as_deref()), ("skipped", Some("person_not_found")));
    }
    assert_eq!(w.notify.requests_to(Endpoint::Email).len(), 1);
    assert!(w.notify.requests_to(Endpoint::Sms).is_empty() && w.notify.requests_to(Endpoint::Push).is_empty());
    let metrics = w.app.metrics().await;
    assert!(
        metrics.contains(r#"ebg_deliveries_total{status="skipped",reason="person_not_found",channel="sms"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_icn_keyed_sms_toggle_off_suppresses_the_sms_while_the_email_sends() {
    let w = wired().await;
    // Push on for this ICN only (an actor gate keyed by the plain ICN); SMS off for everyone.
    crate::helpers::enable_actor(&w.app, PUSH_FEATURE, ICN).await;
    let body =
        json!({"email_template_id": TEMPLATE_ID, "sms_template_id": SMS_TEMPLATE, "push_template_id": PUSH_TEMPLATE});
    let answered = channels(post(&w.app, ALL_PATH, PARTICIPANT_ID, body, None).await).await;
    assert!(answered.iter().all(|(_, _, s)| s == "queued"), "ICN-keyed toggles are decided by the worker");
    w.app.deliver_all().await;

    assert_eq!(row(&w.app, answered[0].1).await.1, "sent");
    let (_, status, reason, ..) = row(&w.app, answered[1].1).await;
    assert_eq!((status.as_str(), reason.as_deref()), ("suppressed", Some("toggle_disabled")));
    assert_eq!(row(&w.app, answered[2].1).await.1, "sent", "the push toggle's actor is the ICN");
    assert!(w.notify.requests_to(Endpoint::Sms).is_empty());
    assert_eq!(w.notify.requests_to(Endpoint::Push).len(), 1);
    let metrics = w.app.metrics().await;
    assert!(
        metrics.contains(r#"ebg_deliveries_total{status="suppressed",reason="toggle_disabled",channel="sms"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn sms_and_push_off_for_everyone_are_suppressed_without_asking_mpi() {
    let w = wired().await;
    // SMS has no gate at all; push has an actor gate for this ICN but is paused (the kill switch).
    crate::helpers::enable_actor(&w.app, PUSH_FEATURE, ICN).await;
    let pause = w
        .app
        .client
        .post(format!("{}/admin/features/{PUSH_FEATURE}/pause", w.app.address))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .json(&json!({"reason": "MPI outage drill"}))
        .send()
        .await
        .unwrap();
    assert_eq!(pause.status(), 200, "{}", pause.text().await.unwrap());
    w.app.state.toggles.refresh().await.unwrap();
    let body = json!({"sms_template_id": SMS_TEMPLATE, "push_template_id": PUSH_TEMPLATE});
    let answered = channels(post(&w.app, ALL_PATH, PARTICIPANT_ID, body, None).await).await;
    w.app.deliver_all().await;

    for (channel, id, _) in &answered {
        let (_, status, reason, ..) = row(&w.app, *id).await;
        assert_eq!((status.as_str(), reason.as_deref()), ("suppressed", Some("toggle_disabled")), "{channel}");
    }
    assert_eq!(w.mpi.lookups_for(PARTICIPANT_ID), 0, "MPI is not asked about a Veteran no channel can reach");
    assert!(w.notify.requests_to(Endpoint::Sms).is_empty() && w.notify.requests_to(Endpoint::Push).is_empty());

    // Once the SMS gate has any actor or percentage, the worker asks MPI again and decides per ICN.
    enable(&w.app, SMS_FEATURE).await;
    // Another template: the suppressed SMS above would make the same one a duplicate within the window.
    let other_template = "8e1d0b9f-3c4d-4a2e-8f9b-1b2c3d4e5f60";
    let sms = single(post(&w.app, SMS_PATH, PARTICIPANT_ID, json!({"template_id": other_template}), None).await).await;
    w.app.deliver_all().await;
    assert_eq!(row(&w.app, sms).await.1, "sent");
    assert_eq!(w.mpi.lookups_for(PARTICIPANT_ID), 1);
}

#[tokio::test]
async fn one_idempotency_key_covers_every_channel_of_a_request() {
    let w = wired().await;
    let body =
        json!({"email_template_id": TEMPLATE_ID, "sms_template_id": SMS_TEMPLATE, "push_template_id": PUSH_TEMPLATE});
    let first = channels(post(&w.app, ALL_PATH, PARTICIPANT_ID, body.clone(), Some("evt-1")).await).await;
    let replay = channels(post(&w.app, ALL_PATH, PARTICIPANT_ID, body.clone(), Some("evt-1")).await).await;
    assert_eq!(replay, first, "the replay answers with the first request's row of every channel");
    assert_eq!(rows(&w.app).await, 3);

    // The same key for another request (other channels, or another template) is refused, and records nothing.
    let fewer = post(&w.app, ALL_PATH, PARTICIPANT_ID, json!({"email_template_id": TEMPLATE_ID}), Some("evt-1")).await;
    assert_eq!(fewer.status(), 422);
    let other =
        json!({"email_template_id": TEMPLATE_ID, "sms_template_id": Uuid::new_v4(), "push_template_id": PUSH_TEMPLATE});
    assert_eq!(post(&w.app, ALL_PATH, PARTICIPANT_ID, other, Some("evt-1")).await.status(), 422);
    let sms_only = post(&w.app, SMS_PATH, PARTICIPANT_ID, json!({"template_id": SMS_TEMPLATE}), Some("evt-1")).await;
    assert_eq!(sms_only.status(), 422);
    assert_eq!(rows(&w.app).await, 3);

    // A key is per request, not per channel: the same key on a new single-channel request works once.
    let push =
        single(post(&w.app, PUSH_PATH, PARTICIPANT_ID, json!({"template_id": "other"}), Some("evt-2")).await).await;
    let again = post(&w.app, PUSH_PATH, PARTICIPANT_ID, json!({"template_id": "other"}), Some("evt-2")).await;
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], push.to_string());
    assert_eq!(rows(&w.app).await, 4);
}

#[tokio::test]
async fn the_duplicate_window_applies_per_channel() {
    let w = wired().await;
    // The same UUID as the email and the SMS template: different channels are not duplicates of each other.
    let both = json!({"email_template_id": TEMPLATE_ID, "sms_template_id": TEMPLATE_ID});
    let first = channels(post(&w.app, ALL_PATH, PARTICIPANT_ID, both, None).await).await;
    assert!(first.iter().all(|(_, _, s)| s == "queued"), "{first:?}");

    let sms_again = post(&w.app, SMS_PATH, PARTICIPANT_ID, json!({"template_id": TEMPLATE_ID}), None).await;
    let sms_again: Value = sms_again.json().await.unwrap();
    assert_eq!(sms_again["status"], "duplicate");
    let push = post(&w.app, PUSH_PATH, PARTICIPANT_ID, json!({"template_id": TEMPLATE_ID}), None).await;
    let push: Value = push.json().await.unwrap();
    assert_eq!(push["status"], "queued", "no earlier push");
    let push_again = post(&w.app, PUSH_PATH, PARTICIPANT_ID, json!({"template_id": TEMPLATE_ID}), None).await;
    let push_again: Value = push_again.json().await.unwrap();
    assert_eq!(push_again["status"], "duplicate");
    let email_again =
        channels(post(&w.app, ALL_PATH, PARTICIPANT_ID, json!({"email_template_id": TEMPLATE_ID}), None).await).await;
    assert_eq!(email_again[0].2, "duplicate");
    let metrics = w.app.metrics().await;
    assert!(metrics.contains(r#"ebg_requests_total{api="send_push",outcome="duplicate",channel="push"}"#), "{metrics}");
}

#[tokio::test]
async fn a_push_whose_call_was_in_flight_at_a_crash_is_sent_again_at_least_once() {
    let w = wired().await;
    enable(&w.app, PUSH_FEATURE).await;
    let push = single(post(&w.app, PUSH_PATH, PARTICIPANT_ID, json!({"template_id": PUSH_TEMPLATE}), None).await).await;
    // A worker claims it (the claim writes the in_flight attempt) and dies before recording anything.
    let claimed = ebg_notify::outbox::claim(
        &w.app.db,
        1,
        std::time::Duration::from_secs(60),
        None,
        &ebg_notify::outbox::CHANNELS,
    )
    .await
    .unwrap();
    assert_eq!(claimed.len(), 1);
    sqlx::query("update notifications set next_attempt_at = now() where id = $1")
        .bind(push)
        .execute(&w.app.db)
        .await
        .unwrap();

    w.app.deliver_all().await;

    assert_eq!(row(&w.app, push).await.1, "sent");
    let outcomes: Vec<String> =
        sqlx::query_scalar("select outcome from notification_attempts where notification_id = $1 order by attempt")
            .bind(push)
            .fetch_all(&w.app.db)
            .await
            .unwrap();
    assert_eq!(outcomes, ["unverifiable", "sent"], "no lookup by reference for a push: sent again");
    assert_eq!(w.notify.requests_to(Endpoint::Push).len(), 1);
    assert_eq!(w.notify.lookups_total(), 0, "pushes are never looked up");
}

#[tokio::test]
async fn the_participant_keyed_email_toggle_is_decided_at_accept_for_the_email_part_only() {
    let w = wired().await;
    sqlx::query("delete from flipper_gates where feature_key = 'event_bus_gateway_emails_enabled'")
        .execute(&w.app.db)
        .await
        .unwrap();
    w.app.state.toggles.refresh().await.unwrap();
    enable(&w.app, SMS_FEATURE).await;
    let body = json!({"email_template_id": TEMPLATE_ID, "sms_template_id": SMS_TEMPLATE});
    let answered = channels(post(&w.app, ALL_PATH, PARTICIPANT_ID, body, None).await).await;
    assert_eq!(answered[0].2, "suppressed", "email toggle off: recorded suppressed at accept, as send_email does");
    assert_eq!(answered[1].2, "queued");
    w.app.deliver_all().await;
    assert_eq!(row(&w.app, answered[0].1).await.2.as_deref(), Some("toggle_disabled"));
    assert_eq!(row(&w.app, answered[1].1).await.1, "sent");
    assert!(w.notify.requests_to(Endpoint::Email).is_empty());
    assert_eq!(w.notify.requests_to(Endpoint::Sms).len(), 1);
}

#[tokio::test]
async fn mpi_outages_are_retried_and_deceased_veterans_are_never_notified() {
    let w = wired().await;
    enable(&w.app, SMS_FEATURE).await;
    enable(&w.app, PUSH_FEATURE).await;
    const DECEASED: &str = "600088888";
    w.mpi.add_deceased(DECEASED, "1098765432V654321", "2025-06-01");
    let push = single(post(&w.app, PUSH_PATH, DECEASED, json!({"template_id": PUSH_TEMPLATE}), None).await).await;
    w.app.deliver_all().await;
    let (_, status, reason, ..) = row(&w.app, push).await;
    assert_eq!((status.as_str(), reason.as_deref()), ("skipped", Some("deceased")));

    // A 503 from MPI is a retry (backoff is 0 in tests), then the SMS goes.
    w.mpi.script([ebg_testkit::mpi::MpiReply::Status(503)]);
    let sms = single(post(&w.app, SMS_PATH, PARTICIPANT_ID, json!({"template_id": SMS_TEMPLATE}), None).await).await;
    assert_eq!(w.app.deliver_due().await, 1);
    assert_eq!(row(&w.app, sms).await.1, "retry_wait");
    w.app.deliver_all().await;
    assert_eq!(row(&w.app, sms).await.1, "sent");
    assert!(w.notify.requests_to(Endpoint::Push).is_empty());
    assert_eq!(w.notify.requests_to(Endpoint::Sms).len(), 1);
}
