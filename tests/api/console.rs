//! The operators' console: the browser walk (Debian's Chromium driven by Playwright, checked with
//! axe-core; `tests/console/walk.mjs`) against the real app, plus the HTTP-level rules it relies on.

use std::path::Path;
use std::process::Command;

use crate::helpers::*;

const READ_TOKEN: &str = "local-read-token";
const CHROMIUM: &str = "/usr/bin/chromium";

/// `npm ci` in tests/console when its node_modules is missing (pinned by package-lock.json).
fn ensure_node_modules(dir: &Path) {
    if dir.join("node_modules/playwright-core").exists() && dir.join("node_modules/axe-core").exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .status()
        .expect("npm runs (Node.js is required for the console walk)");
    assert!(status.success(), "npm ci in tests/console failed");
}

/// Inserts one notification that ended `dead` after two VA Notify 500s (the state replay acts on).
async fn dead_letter(app: &TestApp) -> uuid::Uuid {
    let id: uuid::Uuid = sqlx::query_scalar(
        "insert into notifications (id, channel, participant_id, template_id, status, status_reason, attempts)
         values (gen_random_uuid(), 'email', '600043201', $1::uuid, 'dead', 'attempts_exhausted', 2) returning id",
    )
    .bind(TEMPLATE_ID)
    .fetch_one(&app.db)
    .await
    .unwrap();
    sqlx::query(
        "insert into notification_attempts (notification_id, attempt, started_at, finished_at, outcome, http_status, error_class)
         select $1, g, now() - interval '1 hour' + g * interval '1 minute', now() - interval '1 hour' + g * interval '1 minute' + interval '120 ms',
                'retryable', 500, 'http_500'
         from generate_series(1, 2) g",
    )
    .bind(id)
    .execute(&app.db)
    .await
    .unwrap();
    id
}

#[tokio::test]
async fn the_browser_walk_passes() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "Chromium is missing at {CHROMIUM}: the console walk needs it (apt-get install -y chromium; .ci/run installs it)"
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console");
    ensure_node_modules(&dir);
    let app = app().spawn().await;
    let dead = dead_letter(&app).await;

    let output = tokio::process::Command::new("node")
        .arg(dir.join("walk.mjs"))
        .args([app.address.as_str(), ADMIN_TOKEN, READ_TOKEN, &dead.to_string()])
        .kill_on_drop(true)
        .output()
        .await
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the console walk failed ({}):\n{stdout}\n{stderr}", output.status);
    assert!(stdout.contains("walk passed"), "{stdout}");
    println!("{stdout}");

    // What the walk did is in the database as the API would have left it.
    assert_eq!(app.status_of(dead).await.0, "queued", "the replay from the page requeued the dead letter");
    let audited: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "select operation, actor, reason from feature_audit where feature_key = 'event_bus_gateway_emails_enabled' order by id",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    for operation in ["describe", "enable", "pause", "resume", "restore", "rollout_abort"] {
        assert!(
            audited.iter().any(|(op, _, _)| op == operation),
            "{operation} missing from the audit log: {audited:?}"
        );
    }
    assert!(audited.iter().all(|(_, actor, _)| actor == "ops"), "every change is audited under the token's name");
    assert!(audited.iter().any(|(op, _, r)| op == "pause" && r.as_deref() == Some("error spike under investigation")));
    let _database = app.stop().await;
}

/// A session cookie from signing in with `token`.
async fn sign_in(app: &TestApp, token: &str) -> String {
    let response =
        app.client.post(format!("{}/console/sign-in", app.address)).form(&[("token", token)]).send().await.unwrap();
    assert_eq!(response.status(), 303);
    let cookie = response.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Max-Age=28800"));
    cookie.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn pages_need_a_session_and_posts_need_the_csrf_token() {
    let app = app().spawn().await;
    let root = app.client.get(format!("{}/", app.address)).send().await.unwrap();
    assert_eq!(root.status(), 303);
    assert_eq!(root.headers()["location"], "/console");
    for path in ["/console", "/console/rollouts", "/console/report", "/console/notifications", "/console/report.md"] {
        let response = app.client.get(format!("{}{path}", app.address)).send().await.unwrap();
        assert_eq!(response.status(), 303, "{path}");
        assert_eq!(response.headers()["location"], "/console/sign-in", "{path}");
    }
    let refused =
        app.client.post(format!("{}/console/sign-in", app.address)).form(&[("token", "nope")]).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.headers().get("set-cookie").is_none());

    let cookie = sign_in(&app, ADMIN_TOKEN).await;
    let page = app.client.get(format!("{}/console", app.address)).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("default-src 'none'") && !csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let html = page.text().await.unwrap();
    assert!(!html.contains("<script"), "the console serves no script");

    let enable = format!("{}/console/features/event_bus_gateway_emails_enabled/enable", app.address);
    let no_token = app.client.post(&enable).header("cookie", &cookie).form(&[("reason", "x")]).send().await.unwrap();
    assert_eq!(no_token.status(), 403);
    let cross_site = app
        .client
        .post(&enable)
        .header("cookie", &cookie)
        .header("origin", "https://evil.example")
        .form(&[("reason", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), 403);
    let gates: i64 = sqlx::query_scalar("select count(*) from flipper_gates").fetch_one(&app.db).await.unwrap();
    assert_eq!(gates, 0, "refused posts changed nothing");

    let forged = format!("{cookie}x");
    let tampered = app.client.get(format!("{}/console", app.address)).header("cookie", forged).send().await.unwrap();
    assert_eq!(tampered.status(), 303, "a tampered cookie is no session");

    let reader = sign_in(&app, READ_TOKEN).await;
    let page = app.client.get(format!("{}/console", app.address)).header("cookie", &reader).send().await.unwrap();
    assert!(page.text().await.unwrap().contains("(read-only)"));
    let _database = app.stop().await;
}

#[tokio::test]
async fn read_only_tokens_read_the_admin_api_but_do_not_write() {
    let app = app().env("EBG_ADMIN__PROTECT_READS", "true").spawn().await;
    let url = format!("{}/flipper/api/features", app.address);
    assert_eq!(app.client.get(&url).send().await.unwrap().status(), 401);
    assert_eq!(app.client.get(&url).bearer_auth(READ_TOKEN).send().await.unwrap().status(), 200);
    let write = app
        .client
        .post(format!("{url}/event_bus_gateway_emails_enabled/boolean"))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 401);
    let _database = app.stop().await;
}

#[tokio::test]
async fn the_console_can_be_turned_off() {
    let app = app().env("EBG_CONSOLE__ENABLED", "false").spawn().await;
    for path in ["/", "/console", "/console/sign-in"] {
        let response = app.client.get(format!("{}{path}", app.address)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
    let _database = app.stop().await;
}

/// The report page per channel: push shows n/a for delivered and clicks, with the reason; the plan form
/// offers the three channel gates.
#[tokio::test]
async fn the_console_reports_per_channel_and_plans_any_gate() {
    let app = app().spawn().await;
    let push = ebg_notify::toggles::PUSH_ENABLED;
    sqlx::query(
        "insert into feature_audit (at, feature_key, operation, before, after, actor)
         values (now() - interval '1 hour', $1, 'enable', '{}'::jsonb,
                 '{\"boolean\": true, \"actors\": [], \"percentage_of_actors\": 0, \"paused\": false}', 'ops')",
    )
    .bind(push)
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query(
        "insert into notifications (id, channel, participant_id, template_id, status, status_reason, sends, created_at)
         values (gen_random_uuid(), 'push', '600043202', 'letter_ready_push', 'sent', 'push_accepted', 1,
                 now() - interval '30 minutes')",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let cookie = sign_in(&app, ADMIN_TOKEN).await;
    let get = |path: String| app.client.get(format!("{}{path}", app.address)).header("cookie", cookie.clone()).send();
    let page = get(format!("/console/report?feature={push}")).await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("no delivery receipts for push"), "the reason is on the page: {html}");
    assert!(html.contains(r#"<td class="num">n/a</td>"#), "delivered and clicks are n/a: {html}");
    let link = ebg_notify::notify::templates::UNIVERSAL_LINK_FEATURE;
    let refused = get(format!("/console/report?feature={link}")).await.unwrap();
    assert_eq!(refused.status(), 422, "not a gate");
    let form = get("/console/rollouts".to_owned()).await.unwrap().text().await.unwrap();
    for gate in ebg_notify::report::GATES {
        assert!(form.contains(&format!(r#"<option value="{gate}""#)), "{gate} in the plan form");
    }
}
