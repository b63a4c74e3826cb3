//! The rollout report (SPEC §9): stages from the audit log, numbers per stage, the golden Markdown,
//! admin auth, query plans on a large table, and retention.

use serde_json::{Value, json};

use crate::helpers::*;

const FEATURE: &str = "event_bus_gateway_emails_enabled";
const GOLDEN: &str = "tests/golden/report_two_stages.md";

async fn audit(app: &TestApp, at: &str, operation: &str, after: Value) {
    sqlx::query(
        "insert into feature_audit (at, feature_key, operation, before, after, actor)
         values ($1::timestamptz, $2, $3, '{}'::jsonb, $4, 'ops')",
    )
    .bind(at)
    .bind(FEATURE)
    .bind(operation)
    .bind(after)
    .execute(&app.db)
    .await
    .unwrap();
}

/// Inserts `count` notifications created from `at` on (one a minute) with the given outcome.
async fn rows(app: &TestApp, at: &str, count: i32, participant_base: i64, status: &str, sends: i32) -> Vec<uuid::Uuid> {
    sqlx::query_scalar(
        "insert into notifications (id, channel, participant_id, template_id, status, sends, created_at)
         select gen_random_uuid(), 'email', ($3 + g)::text, $4::uuid, $5, $6, $1::timestamptz + g * interval '1 minute'
         from generate_series(0, $2 - 1) g returning id",
    )
    .bind(at)
    .bind(count)
    .bind(participant_base)
    .bind(TEMPLATE_ID)
    .bind(status)
    .bind(sends)
    .fetch_all(&app.db)
    .await
    .unwrap()
}

async fn click(app: &TestApp, id: uuid::Uuid, total: i32, counted: i32) {
    sqlx::query("insert into clicks (notification_id, total, counted) values ($1, $2, $3)")
        .bind(id)
        .bind(total)
        .bind(counted)
        .execute(&app.db)
        .await
        .unwrap();
}

/// A synthetic two-stage rollout: 25% for a day (with a no-op change inside it), then 100%.
async fn two_stage_rollout(app: &TestApp) {
    let gates = |pct: i32, boolean: bool| json!({"boolean": boolean, "actors": [], "percentage_of_actors": pct, "percentage_of_time": 0, "paused": false});
    audit(app, "2026-01-01T00:00:00Z", "add_feature", gates(0, false)).await;
    audit(app, "2026-01-05T00:00:00Z", "percentage_of_actors", gates(25, false)).await;
    audit(app, "2026-01-05T12:00:00Z", "percentage_of_actors", gates(25, false)).await;
    audit(app, "2026-01-06T00:00:00Z", "enable", gates(25, true)).await;

    // Stage 1: two delivered (one clicked twice), one failed before any send, one skipped,
    // one suppressed, one duplicate of the first participant.
    let delivered = rows(app, "2026-01-05T01:00:00Z", 2, 600_000_100, "delivered", 1).await;
    click(app, delivered[0], 3, 2).await;
    rows(app, "2026-01-05T02:00:00Z", 1, 600_000_102, "failed", 0).await;
    rows(app, "2026-01-05T03:00:00Z", 1, 600_000_103, "skipped", 0).await;
    rows(app, "2026-01-05T04:00:00Z", 1, 600_000_104, "suppressed", 0).await;
    rows(app, "2026-01-05T05:00:00Z", 1, 600_000_099, "duplicate", 0).await;
    // Stage 2: 24 delivered (6 clicked by people, 1 only by a scanner), 1 dead after two sends, 1 pending.
    let delivered = rows(app, "2026-01-06T01:00:00Z", 24, 600_000_200, "delivered", 1).await;
    for id in &delivered[..6] {
        click(app, *id, 1, 1).await;
    }
    click(app, delivered[6], 2, 0).await;
    rows(app, "2026-01-06T02:00:00Z", 1, 600_000_300, "dead", 2).await;
    rows(app, "2026-01-06T03:00:00Z", 1, 600_000_301, "queued", 0).await;
    // Outside the period: must not count.
    rows(app, "2026-01-07T00:00:00Z", 3, 600_000_400, "failed", 0).await;
}

async fn get_report(app: &TestApp, query: &str) -> reqwest::Response {
    app.client
        .get(format!("{}/admin/rollout/report?{query}", app.address))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
}

/// Click tracking on and a minimum sample of 20: stage 1 (3 attempted) is too small to judge, stage 2
/// (25 attempted) is judged.
fn tracked_app() -> TestAppBuilder {
    app().env("EBG_CLICKS__ENABLED", "true").env("EBG_REPORT__MIN_SAMPLE", "20")
}

#[tokio::test]
async fn two_stage_rollout_matches_the_golden_markdown() {
    let app = tracked_app().spawn().await;
    two_stage_rollout(&app).await;
    let r = get_report(&app, "from=2026-01-05&to=2026-01-07T00:00:00Z&format=markdown").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/markdown"));
    let markdown = r.text().await.unwrap();
    if std::env::var("UPDATE_GOLDEN").is_ok() {
        std::fs::write(GOLDEN, &markdown).unwrap();
    }
    let golden = std::fs::read_to_string(GOLDEN).expect("golden file (UPDATE_GOLDEN=1 writes it)");
    assert_eq!(markdown, golden);
}

#[tokio::test]
async fn json_report_has_the_numbers_per_stage() {
    let app = tracked_app().spawn().await;
    two_stage_rollout(&app).await;
    let r = get_report(&app, "feature=event_bus_gateway_emails_enabled&from=2026-01-05&to=2026-01-07").await;
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.unwrap();
    let stages = report["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2, "{report:#}");
    let first = &stages[0];
    assert_eq!(first["start"], "2026-01-05T00:00:00Z");
    assert_eq!(first["end"], "2026-01-06T00:00:00Z");
    assert_eq!(first["percentage"], 25.0);
    for (field, value) in [
        ("requests", 6),
        ("suppressed", 1),
        ("duplicates", 1),
        ("unique_participants", 4),
        ("attempted", 3),
        ("sent", 2),
        ("delivered", 2),
        ("failed", 1),
        ("skipped", 1),
        ("unique_clicks", 1),
    ] {
        assert_eq!(first[field], value, "stage 1 {field}");
    }
    // One failure in three attempts is 33%, but three attempts are no evidence: not a FAIL, not a PASS.
    assert_eq!(first["verdict"], "not_enough_data");
    assert_eq!(report["min_sample"], 20);
    assert_eq!(report["click_tracking"], true);
    assert_eq!(first["click_through_rate"], 0.5);
    let second = &stages[1];
    assert_eq!(second["percentage"], 100.0);
    assert_eq!(second["end"], "2026-01-07T00:00:00Z");
    for (field, value) in [
        ("requests", 26),
        ("attempted", 25),
        ("sent", 25),
        ("delivered", 24),
        ("failed", 1),
        ("pending", 1),
        ("unique_clicks", 6),
    ] {
        assert_eq!(second[field], value, "stage 2 {field}");
    }
    assert_eq!(second["error_rate"], 0.04);
    assert_eq!(second["click_through_rate"], 0.25);
    assert_eq!(second["verdict"], "pass");
}

/// The defaults: 100 attempted sends before a stage is judged, click tracking off.
#[tokio::test]
async fn small_stages_are_not_enough_data_and_untracked_clicks_are_not_a_rate() {
    let app = app().spawn().await;
    two_stage_rollout(&app).await;
    let report: Value = get_report(&app, "from=2026-01-05&to=2026-01-07").await.json().await.unwrap();
    assert_eq!(report["min_sample"], 100);
    assert_eq!(report["click_tracking"], false);
    for stage in report["stages"].as_array().unwrap() {
        assert_eq!(stage["verdict"], "not_enough_data", "{stage:#}");
        assert_eq!(stage["click_through_rate"], Value::Null, "{stage:#}");
    }
    let markdown = get_report(&app, "from=2026-01-05&to=2026-01-07&format=markdown").await.text().await.unwrap();
    assert!(!markdown.contains("PASS"), "a 25-send stage never passes under a 100 minimum: {markdown}");
    assert!(markdown.contains("| 4.00% | n/a (click tracking off) | NOT ENOUGH DATA |"), "{markdown}");
    assert!(markdown.contains("- Click-through rate: n/a (click tracking off) (unique clicks: 6, delivered: 24)"));
    assert!(markdown.contains("**NOT ENOUGH DATA** (25 attempted, fewer than the 100 a stage needs; not a pass)"));
    // A minimum of 0 would let a stage without evidence pass: refused at startup.
    let bad = ebg_notify::config::Config::load_from(vec![("EBG_REPORT__MIN_SAMPLE".to_owned(), "0".to_owned())]);
    assert!(bad.unwrap_err().to_string().contains("report.min_sample"));
}

#[tokio::test]
async fn the_report_needs_an_admin_token_and_valid_parameters() {
    let app = app().spawn().await;
    let url = format!("{}/admin/rollout/report", app.address);
    assert_eq!(app.client.get(&url).send().await.unwrap().status(), 401);
    let ebg = app.client.get(&url).bearer_auth(token_for(PARTICIPANT_ID)).send().await.unwrap();
    assert_eq!(ebg.status(), 401, "the EBG token does not open admin routes");
    for query in ["feature=nope", "from=yesterday", "format=pdf", "from=2026-01-02&to=2026-01-01"] {
        assert_eq!(get_report(&app, query).await.status(), 400, "{query}");
    }
    let empty: Value = get_report(&app, "").await.json().await.unwrap();
    assert_eq!(empty["stages"], json!([]));
}

/// With 1,000,000 notifications, a stage's numbers come from an index range scan, not a table scan.
#[tokio::test]
async fn stage_queries_use_indexes_on_a_million_rows() {
    let app = app().spawn().await;
    sqlx::query(
        "insert into notifications (id, channel, participant_id, template_id, status, sends, created_at)
         select gen_random_uuid(), 'email', (600000000 + g % 50000)::text, $1::uuid,
                case when g % 50 = 0 then 'failed' else 'delivered' end, 1,
                timestamptz '2026-01-01' + g * interval '3 seconds'
         from generate_series(1, 1000000) g",
    )
    .bind(TEMPLATE_ID)
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query("analyze notifications").execute(&app.db).await.unwrap();
    let explain = format!("explain (format json) {}", ebg_notify::report::STAGE_SQL);
    let plan: Value = sqlx::query_scalar(&explain)
        .bind("email")
        .bind(chrono::DateTime::parse_from_rfc3339("2026-01-10T00:00:00Z").unwrap())
        .bind(chrono::DateTime::parse_from_rfc3339("2026-01-11T00:00:00Z").unwrap())
        // Delivery receipts and a tracked link, as for email.
        .bind(true)
        .bind(true)
        .fetch_one(&app.db)
        .await
        .unwrap();
    let mut scans = Vec::new();
    scans_of(&plan, &mut scans);
    assert!(scans.iter().any(|(_, index)| index == "notifications_created"), "{plan:#}");
    assert!(!scans.iter().any(|(node, target)| node == "Seq Scan" && target == "notifications"), "{plan:#}");
}

/// (node type, index or relation) of every scan node in an EXPLAIN (FORMAT JSON) plan.
fn scans_of(plan: &Value, out: &mut Vec<(String, String)>) {
    match plan {
        Value::Array(items) => items.iter().for_each(|i| scans_of(i, out)),
        Value::Object(node) => {
            if let Some(Value::String(kind)) = node.get("Node Type") {
                if kind.contains("Scan") {
                    let target = node.get("Index Name").or_else(|| node.get("Relation Name"));
                    out.push((kind.clone(), target.and_then(Value::as_str).unwrap_or_default().to_owned()));
                }
            }
            node.values().for_each(|v| scans_of(v, out));
        }
        _ => {}
    }
}

#[tokio::test]
async fn retention_deletes_old_rows_in_batches_and_keeps_pending_mail() {
    let app = app().spawn().await;
    let old = rows(&app, "2020-01-01T00:00:00Z", 5, 600_000_000, "delivered", 1).await;
    let old_pending = rows(&app, "2020-01-01T00:00:00Z", 1, 600_000_010, "queued", 0).await;
    let recent = rows(&app, "2099-01-01T00:00:00Z", 2, 600_000_020, "delivered", 1).await;
    for id in old.iter().chain(&recent) {
        click(&app, *id, 1, 1).await;
        sqlx::query(
            "insert into notification_events (notification_id, status, effect, received_at)
             values ($1, 'delivered', 'moved', (select created_at from notifications where id = $1))",
        )
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
    }
    sqlx::query("update clicks set last_at = n.created_at from notifications n where n.id = clicks.notification_id")
        .execute(&app.db)
        .await
        .unwrap();
    // A duplicate pointing at an old row must not block its deletion.
    sqlx::query("update notifications set duplicate_of = $1 where id = $2")
        .bind(old[0])
        .bind(recent[0])
        .execute(&app.db)
        .await
        .unwrap();

    let cutoff = chrono::Utc::now() - chrono::Duration::days(400);
    let purged = ebg_notify::retention::purge_before(&app.db, cutoff, 2).await.unwrap();
    assert_eq!((purged.events, purged.clicks, purged.notifications), (5, 5, 5));
    let left: Vec<uuid::Uuid> =
        sqlx::query_scalar("select id from notifications order by created_at").fetch_all(&app.db).await.unwrap();
    assert_eq!(left.len(), 3);
    assert!(left.contains(&old_pending[0]), "pending mail is never deleted");
    let events: i64 = sqlx::query_scalar("select count(*) from notification_events").fetch_one(&app.db).await.unwrap();
    let clicks: i64 = sqlx::query_scalar("select count(*) from clicks").fetch_one(&app.db).await.unwrap();
    assert_eq!((events, clicks), (2, 2));
    // Running again finds nothing.
    let again = ebg_notify::retention::purge_before(&app.db, cutoff, 2).await.unwrap();
    assert_eq!(again, ebg_notify::retention::Purged::default());
}

/// Sets `feature` on for everyone through Flipper's API, so the change is audited (the report's stage).
async fn enable_audited(app: &TestApp, feature: &str) {
    let r = app
        .client
        .post(format!("{}/flipper/api/features/{feature}/boolean", app.address))
        .bearer_auth(ADMIN_TOKEN)
        .header("x-reason", "stage")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    app.state.toggles.refresh().await.unwrap();
}

/// Push through the real worker: an accepted push ends `sent` (push_accepted) and is its final outcome, so
/// the stage counts it as attempted and sent, never delivered; the error rate is failed / attempted.
#[tokio::test]
async fn a_push_stage_has_no_delivered_count_and_its_error_rate_is_failed_over_attempted() {
    use crate::helpers::{PUSH_FEATURE, PUSH_PATH, PUSH_TEMPLATE, post, wired_with};
    let w = wired_with(&[("EBG_CLICKS__ENABLED", "true".to_owned()), ("EBG_REPORT__MIN_SAMPLE", "3".to_owned())]).await;
    enable_audited(&w.app, PUSH_FEATURE).await;
    let people: Vec<String> = (0..3).map(|n| format!("60040000{n}")).collect();
    for (n, id) in people.iter().enumerate() {
        w.mpi.add_patient(id, &format!("101234560{n}V123456"), None);
    }
    w.notify.script([ebg_testkit::va_notify::Reply::Created, ebg_testkit::va_notify::Reply::BadRequest]);
    for id in &people {
        assert_eq!(post(&w.app, PUSH_PATH, id, json!({"template_id": PUSH_TEMPLATE}), None).await.status(), 200);
    }
    w.app.deliver_all().await;
    let reasons: Vec<(String, Option<String>)> =
        sqlx::query_as("select status, status_reason from notifications where channel = 'push' order by status")
            .fetch_all(&w.app.db)
            .await
            .unwrap();
    assert_eq!(reasons.iter().filter(|(s, r)| s == "sent" && r.as_deref() == Some("push_accepted")).count(), 2);
    assert_eq!(reasons.iter().filter(|(s, _)| s == "failed").count(), 1, "{reasons:?}");

    let report: Value = get_report(&w.app, &format!("feature={PUSH_FEATURE}")).await.json().await.unwrap();
    assert_eq!(report["channel"], "push");
    assert_eq!(report["measures"], json!({"delivery_receipts": false, "tracked_link": false}));
    let why = report["unavailable"]["delivered"].as_str().unwrap();
    assert!(why.contains("no delivery receipts for push") && why.contains("failed / attempted"), "{why}");
    assert!(report["unavailable"]["click_through_rate"].is_string(), "{report:#}");
    let stage = &report["stages"].as_array().unwrap().last().unwrap().clone();
    for (field, value) in
        [("requests", 3), ("attempted", 3), ("sent", 2), ("failed", 1), ("settled", 3), ("pending", 0)]
    {
        assert_eq!(stage[field], value, "push {field}: {stage:#}");
    }
    for field in ["delivered", "unique_clicks", "click_through_rate"] {
        assert_eq!(stage[field], Value::Null, "push has no {field}: {stage:#}");
    }
    assert!((stage["error_rate"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9, "{stage:#}");
    assert_eq!(stage["verdict"], "fail", "1 of 3 is above 5%");

    let markdown = get_report(&w.app, &format!("feature={PUSH_FEATURE}&format=markdown")).await.text().await.unwrap();
    assert!(markdown.contains("the push error rate is failed / attempted sends"), "{markdown}");
    assert!(markdown.contains("VA Notify gives no delivery receipts for push"), "{markdown}");
    assert!(markdown.contains("- Sent: 2 · Delivered: n/a · Failed: 1"), "{markdown}");
    assert!(markdown.contains("| 33.33% | n/a | FAIL |"), "{markdown}");
    assert!(markdown.contains("- Click-through rate: n/a (no tracked link in push)"), "{markdown}");
}

/// SMS carries the tracked link (its `host` personalisation is the tracker's, like email's) and has
/// delivery receipts (callbacks): delivered and click-through rate are measured.
#[tokio::test]
async fn an_sms_stage_counts_deliveries_from_callbacks_and_tracked_clicks() {
    let app = tracked_app().spawn().await;
    let sms = "event_bus_gateway_letter_ready_sms_notifications";
    let gates =
        json!({"boolean": true, "actors": [], "percentage_of_actors": 0, "percentage_of_time": 0, "paused": false});
    sqlx::query(
        "insert into feature_audit (at, feature_key, operation, before, after, actor)
         values ('2026-02-01T00:00:00Z', $1, 'enable', '{}'::jsonb, $2, 'ops')",
    )
    .bind(sms)
    .bind(gates)
    .execute(&app.db)
    .await
    .unwrap();
    let delivered: Vec<uuid::Uuid> = sqlx::query_scalar(
        "insert into notifications (id, channel, participant_id, template_id, status, sends, created_at)
         select gen_random_uuid(), 'sms', (600500000 + g)::text, $1, case when g < 4 then 'delivered'
                else 'permanent_failure' end, 1, timestamptz '2026-02-01T01:00:00Z' + g * interval '1 minute'
         from generate_series(0, 4) g returning id",
    )
    .bind(TEMPLATE_ID)
    .fetch_all(&app.db)
    .await
    .unwrap();
    click(&app, delivered[0], 1, 1).await;
    // An email in the same hour is another channel's: not counted.
    rows(&app, "2026-02-01T01:30:00Z", 2, 600_600_000, "failed", 0).await;

    let report: Value = get_report(&app, &format!("feature={sms}&from=2026-02-01")).await.json().await.unwrap();
    assert_eq!((report["channel"].clone(), report.get("unavailable")), (json!("sms"), None), "{report:#}");
    let stage = &report["stages"][0];
    for (field, value) in [("attempted", 5), ("delivered", 4), ("failed", 1), ("unique_clicks", 1), ("settled", 5)] {
        assert_eq!(stage[field], value, "sms {field}: {stage:#}");
    }
    assert_eq!(stage["click_through_rate"], 0.25);
    assert_eq!(stage["error_rate"], 0.2);
    let markdown =
        get_report(&app, &format!("feature={sms}&from=2026-02-01&format=markdown")).await.text().await.unwrap();
    assert!(markdown.contains("suppressed by the toggle or quiet hours: 0"), "{markdown}");
    assert!(markdown.contains("- Click-through rate: 25.00% (unique clicks: 1, delivered: 4)"), "{markdown}");
}

/// Only the three channel gates are reports: the universal-link feature picks a template, it gates nothing.
#[tokio::test]
async fn a_feature_that_gates_no_channel_is_refused_naming_feature_and_the_gates() {
    let app = app().spawn().await;
    for feature in ["event_bus_gateway_letter_ready_email_universal_link", "nope"] {
        let r = get_report(&app, &format!("feature={feature}")).await;
        assert_eq!(r.status(), 400, "{feature}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["errors"][0]["source"]["parameter"], "feature", "{body:#}");
        let detail = body["errors"][0]["detail"].as_str().unwrap();
        for gate in ebg_notify::report::GATES {
            assert!(detail.contains(gate), "{detail}");
        }
    }
}
