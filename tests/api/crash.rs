//! The real binary, SIGKILLed under load and restarted: every acknowledged request is sent exactly
//! once. VA Notify answers slowly, so the kill lands while calls are in flight; the restarted process
//! takes the dead one's rows at once (its owner lock is free, the 60 s lease is not over) and finds
//! each in-flight call's notification by reference instead of sending it again.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebg_testkit::FakeVaNotify;
use ebg_testkit::va_notify::Endpoint;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;
use crate::helpers::{PUSH_TEMPLATE, SMS_TEMPLATE};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_binary(env: &[(String, String)], port: u16) -> KillOnDrop {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ebg-notify"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("EBG_") || k == "DATABASE_URL") {
        cmd.env_remove(key);
    }
    cmd.envs(env.iter().cloned())
        .env("EBG_HTTP__ADDR", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(KillOnDrop)
        .expect("binary starts")
}

/// Starts the binary with `env` on a free port and turns `features` on; returns once the process has had time
/// to see them (the toggle refresh interval is 200 ms in tests). The process, its port and the database.
async fn start_with(env: &[(String, String)], features: &[&str]) -> (KillOnDrop, u16, sqlx::PgPool) {
    let database_url = env.iter().rev().find(|(k, _)| k == "EBG_DATABASE__URL").unwrap().1.clone();
    let port = free_port();
    let process = start_binary(env, port);
    wait_ready(&reqwest::Client::new(), port).await;
    let db = sqlx::PgPool::connect(&database_url).await.unwrap();
    for feature in features {
        enable_feature(&db, feature).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    (process, port, db)
}

/// SIGKILLs `process` (no shutdown hooks run) once `acked()` reaches `enough`, or after 4 s.
async fn kill_once(process: &mut KillOnDrop, acked: impl Fn() -> usize, enough: usize) {
    let mut waited = 0;
    while acked() < enough && waited < 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
    }
    process.kill().unwrap();
    process.wait().unwrap();
}

async fn wait_ready(client: &reqwest::Client, port: u16) {
    for _ in 0..200 {
        if let Ok(r) = client.get(format!("http://127.0.0.1:{port}/health/ready")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("binary never became ready");
}

/// Sends `count` requests for distinct participants, `parallel` at a time; returns the acknowledged ids.
async fn load(port: u16, from: u32, count: u32, acked: Arc<Mutex<Vec<Uuid>>>) {
    let client = reqwest::Client::new();
    let token_of = |i: u32| token_for(&(600_200_000 + i).to_string());
    let url = format!("http://127.0.0.1:{port}{SEND_EMAIL}");
    let requests = futures::stream::iter(from..from + count).map(|i| {
        let (client, url, acked, token) = (client.clone(), url.clone(), acked.clone(), token_of(i));
        async move {
            let sent = client
                .post(&url)
                .bearer_auth(token)
                .header("Accept", "application/json")
                .json(&json!({ "template_id": TEMPLATE_ID }))
                .send()
                .await;
            if let Ok(r) = sent {
                if r.status() == 200 {
                    if let Ok(body) = r.json::<serde_json::Value>().await {
                        if let Some(id) = body["id"].as_str().and_then(|s| s.parse().ok()) {
                            acked.lock().unwrap().push(id);
                        }
                    }
                }
            }
        }
    });
    use futures::StreamExt;
    requests.buffer_unordered(16).collect::<Vec<()>>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_and_doubles_nothing() {
    let notify = FakeVaNotify::start().await;
    notify.set_latency(Duration::from_millis(150));
    notify.set_recording(false);
    let (env, _database) = app()
        .notify(&notify)
        .with_workers()
        .env("EBG_WORKER__CONCURRENCY", 8)
        .env("EBG_WORKER__LEASE_SECONDS", 60)
        .into_env();
    let client = reqwest::Client::new();
    let (mut first, port, db) = start_with(&env, &[EMAIL_FEATURE]).await;

    let acked = Arc::new(Mutex::new(Vec::new()));
    let running = tokio::spawn(load(port, 0, 600, acked.clone()));
    // Kill once a good part of the load is acknowledged and deliveries are in flight.
    kill_once(&mut first, || acked.lock().unwrap().len(), 150).await;
    let _ = running.await;
    let before_restart = acked.lock().unwrap().len();
    assert!(before_restart >= 150, "load too small to mean anything: {before_restart}");

    let port = free_port();
    let mut second = start_binary(&env, port);
    wait_ready(&client, port).await;
    load(port, 600, 100, acked.clone()).await;
    let acked: Vec<Uuid> = acked.lock().unwrap().clone();

    // Well within the 60 s lease: the dead process's rows must be taken because its lock is free.
    let mut all_sent = false;
    for _ in 0..300 {
        let pending: i64 =
            sqlx::query_scalar("select count(*) from notifications where id = any($1) and status <> 'sent'")
                .bind(&acked)
                .fetch_one(&db)
                .await
                .unwrap();
        if pending == 0 {
            all_sent = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.kill().unwrap();
    second.wait().unwrap();
    assert!(all_sent, "some acknowledged notifications were never sent");

    // What VA Notify holds, including notifications created for a client killed before the 201.
    let sends: HashMap<String, usize> = notify.references();
    for id in &acked {
        assert!(sends.contains_key(&id.to_string()), "acknowledged {id} never reached VA Notify");
    }
    let doubled: Vec<&String> = sends.iter().filter(|(_, n)| **n > 1).map(|(r, _)| r).collect();
    assert!(doubled.is_empty(), "sent more than once: {doubled:?}");
    let reconciled: i64 = sqlx::query_scalar("select count(*) from notifications where status_reason = 'reconciled'")
        .fetch_one(&db)
        .await
        .unwrap();
    let unresolved: i64 = sqlx::query_scalar("select count(*) from notification_attempts where outcome = 'in_flight'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(unresolved, 0, "every call in flight at the kill was reconciled");
    assert!(reconciled >= 1, "the kill must land while calls are in flight for this test to mean anything");
    eprintln!(
        "acknowledged {} ({} before the kill), reconciled {reconciled} in-flight calls, doubled 0",
        acked.len(),
        before_restart
    );
}

/// One acknowledged row of the mixed load: the person's index, the channel and the row id.
type Acked = Arc<Mutex<Vec<(u32, String, Uuid)>>>;

/// People of the mixed drill: participant `600_300_000 + i`, ICN [`icn_for`]`(i)`.
fn mixed_participant(i: u32) -> String {
    (600_300_000 + i).to_string()
}

/// Sends `count` send_notifications requests (email + SMS + push) for distinct people, 16 at a time;
/// records the rows of each acknowledged one.
async fn load_mixed(port: u16, from: u32, count: u32, acked: Acked) {
    use futures::StreamExt;
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}{SEND_NOTIFICATIONS}");
    let body =
        json!({ "email_template_id": TEMPLATE_ID, "sms_template_id": SMS_TEMPLATE, "push_template_id": PUSH_TEMPLATE });
    let requests = futures::stream::iter(from..from + count).map(|i| {
        let (client, url, acked, body) = (client.clone(), url.clone(), acked.clone(), body.clone());
        async move {
            let sent = client
                .post(&url)
                .bearer_auth(token_for_every_route(&mixed_participant(i)))
                .header("Accept", "application/json")
                .json(&body)
                .send()
                .await;
            if let Ok(response) = sent {
                if let Some(rows) = accepted_channels(response).await {
                    acked.lock().unwrap().extend(rows.into_iter().map(|(channel, id)| (i, channel, id)));
                }
            }
        }
    });
    requests.buffer_unordered(16).collect::<Vec<()>>().await;
}

/// The same drill with email, SMS and push in one request each (send_notifications; MPI over mTLS for
/// the ICNs). Email and SMS are reconciled by `reference`, so each is at VA Notify exactly once. Push has
/// nothing to reconcile by, so it is at least once: none is lost, and one VA received twice is one whose
/// call was in flight at the kill (an attempt closed `unverifiable`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_mixed_channel_load_loses_nothing_and_doubles_only_pushes_in_flight() {
    const BEFORE: u32 = 300;
    const AFTER: u32 = 50;
    let fakes = Upstreams::start().await;
    fakes.notify.set_latency(Duration::from_millis(150));
    for i in 0..BEFORE + AFTER {
        fakes.add_person(&mixed_participant(i), "JANE", &icn_for(i));
    }
    let (env, _database) = app()
        .upstreams(&fakes)
        .with_workers()
        .env("EBG_WORKER__CONCURRENCY", 16)
        .env("EBG_WORKER__LEASE_SECONDS", 60)
        .into_env();
    let client = reqwest::Client::new();
    let (mut first, port, db) = start_with(&env, &[EMAIL_FEATURE, SMS_FEATURE, PUSH_FEATURE]).await;

    let acked: Acked = Arc::new(Mutex::new(Vec::new()));
    let running = tokio::spawn(load_mixed(port, 0, BEFORE, acked.clone()));
    // Kill once a good part of the load is acknowledged and calls of every channel are in flight.
    kill_once(&mut first, || acked.lock().unwrap().len(), 3 * 100).await;
    let _ = running.await;
    let before_restart = acked.lock().unwrap().len();
    assert!(before_restart >= 3 * 100, "load too small to mean anything: {before_restart} rows");

    let port = free_port();
    let mut second = start_binary(&env, port);
    wait_ready(&client, port).await;
    load_mixed(port, BEFORE, AFTER, acked.clone()).await;
    let acked: Vec<(u32, String, Uuid)> = acked.lock().unwrap().clone();
    let ids: Vec<Uuid> = acked.iter().map(|(_, _, id)| *id).collect();

    let pending = || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from notifications where id = any($1) and status in ('queued', 'retry_wait', 'sending')",
        )
        .bind(&ids)
        .fetch_one(&db)
        .await
        .unwrap()
    };
    let mut settled = false;
    for _ in 0..600 {
        if pending().await == 0 {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.kill().unwrap();
    second.wait().unwrap();
    assert!(settled, "{} acknowledged rows never reached a final state", pending().await);
    // Every person is known everywhere and every toggle is on: each final state is `sent`.
    let not_sent: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "select channel, status, status_reason from notifications where id = any($1) and status <> 'sent'",
    )
    .bind(&ids)
    .fetch_all(&db)
    .await
    .unwrap();
    assert!(not_sent.is_empty(), "acknowledged rows that ended other than sent: {not_sent:?}");

    // Email and SMS: exactly once each at VA Notify (including notifications created for the killed client).
    let references = fakes.notify.references();
    for (_, channel, id) in acked.iter().filter(|(_, channel, _)| channel != "push") {
        assert_eq!(references.get(&id.to_string()).copied(), Some(1), "{channel} {id} at VA Notify");
    }
    // Push: by ICN (one push row per person), at least once; twice only with an in-doubt call behind it.
    let mut pushes: HashMap<String, usize> = HashMap::new();
    for request in fakes.notify.requests_to(Endpoint::Push).iter().filter(|r| r.status == 201) {
        let icn = request.body.as_ref().unwrap()["recipient_identifier"]["id_value"].as_str().unwrap().to_owned();
        *pushes.entry(icn).or_default() += 1;
    }
    let mut doubled_pushes = 0;
    for (i, _, id) in acked.iter().filter(|(_, channel, _)| channel == "push") {
        let received = pushes.get(&icn_for(*i)).copied().unwrap_or(0);
        assert!(received >= 1, "push {id} was lost");
        let unverifiable: i64 = sqlx::query_scalar(
            "select count(*) from notification_attempts where notification_id = $1 and outcome = 'unverifiable'",
        )
        .bind(id)
        .fetch_one(&db)
        .await
        .unwrap();
        assert!(
            received as i64 <= 1 + unverifiable,
            "push {id} received {received} times with {unverifiable} in-doubt calls: a double without cause"
        );
        if received > 1 {
            doubled_pushes += 1;
        }
    }
    let unresolved: i64 = sqlx::query_scalar("select count(*) from notification_attempts where outcome = 'in_flight'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(unresolved, 0, "every call in flight at the kill was resolved");
    let (reconciled, unverifiable): (i64, i64) = sqlx::query_as(
        "select (select count(*) from notifications where status_reason = 'reconciled'),
                (select count(*) from notification_attempts where outcome = 'unverifiable')",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(
        reconciled + unverifiable >= 1,
        "the kill must land while calls are in flight for this test to mean anything"
    );
    eprintln!(
        "acknowledged {} rows ({before_restart} before the kill); in flight at the kill: {reconciled} email/SMS \
         adopted by reference, {unverifiable} pushes unverifiable ({doubled_pushes} of them received twice); \
         email/SMS doubled 0, lost 0",
        acked.len()
    );
}
