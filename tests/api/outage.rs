//! The database made unreachable mid-load: a TCP proxy between the app and PostgreSQL stops
//! forwarding for a few seconds. Every request answered 2xx has its row, every request answered 503
//! has none (apart from a COMMIT whose acknowledgement was lost, which must then be counted), and the
//! request counters and latency histogram equal what the clients saw.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebg_testkit::TcpProxy;
use futures::StreamExt;
use serde_json::json;

use crate::helpers::*;

const CLIENTS: usize = 16;

fn postgres_addr() -> SocketAddr {
    let url = url::Url::parse(&server_url()).unwrap();
    let host = url.host_str().unwrap().to_owned();
    let port = url.port().unwrap_or(5432);
    std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port)).unwrap().next().unwrap()
}

/// One request's outcome as its client saw it.
struct Seen {
    participant: String,
    status: u16,
    retry_after: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_during_a_database_outage_is_never_recorded() {
    let proxy = TcpProxy::start(postgres_addr()).await.unwrap();
    // Named with the run's prefix and dropped when the test passes (declared first, so dropped last).
    let test_database = TestDatabase::fresh();
    let database = test_database.name.clone();
    let direct_url = format!("{}/{database}", server_url());
    let app = app()
        .database(&format!("postgres://postgres@{}/{database}", proxy.addr()))
        .env("EBG_HTTP__REQUEST_TIMEOUT_SECONDS", 4)
        .env("EBG_ACCEPT__DEADLINE_MS", 1000)
        .env("EBG_ACCEPT__TRANSACTION_TIMEOUT_MS", 1000)
        .env("EBG_DATABASE__ACQUIRE_TIMEOUT_MS", 500)
        .spawn()
        .await;
    app.enable_emails().await;
    let direct = sqlx::PgPool::connect(&direct_url).await.unwrap();
    let requests_before = request_counts(&app).await;

    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let load = tokio::spawn(run_load(app.address.clone(), seen.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy.stall();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    proxy.restore();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.cancel();
    load.await.unwrap();

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let ok: Vec<&Seen> = seen.iter().filter(|s| s.status == 200).collect();
    let unavailable: Vec<&Seen> = seen.iter().filter(|s| s.status == 503).collect();
    assert_eq!(ok.len() + unavailable.len(), seen.len(), "only 200 and 503 expected");
    assert!(
        ok.len() > 50 && unavailable.len() > 10,
        "the outage must show: {} ok, {} 503",
        ok.len(),
        unavailable.len()
    );
    assert!(unavailable.iter().all(|s| s.retry_after), "every 503 carries Retry-After");

    // A COMMIT whose acknowledgement was lost is withdrawn once the database answers; only a row
    // already in use would be kept (nothing uses them here: no workers, no retries).
    let commit_unknown = app.metric("ebg_accept_commit_unknown_total").await;
    let resolved = app.eventually(Duration::from_secs(5), || async {
        in_doubt(&app, "absent").await + in_doubt(&app, "withdrawn").await + in_doubt(&app, "kept").await
            == commit_unknown
    });
    assert!(resolved.await, "every unacknowledged commit is resolved");
    let (absent, withdrawn) = (in_doubt(&app, "absent").await, in_doubt(&app, "withdrawn").await);
    let rows: Vec<(String, i64)> =
        sqlx::query_as("select participant_id, count(*) from notifications group by participant_id")
            .fetch_all(&direct)
            .await
            .unwrap();
    let rows: std::collections::HashMap<String, i64> = rows.into_iter().collect();
    for s in &ok {
        assert_eq!(rows.get(&s.participant), Some(&1), "a 200 without exactly one row");
    }
    let recorded_503s = unavailable.iter().filter(|s| rows.contains_key(&s.participant)).count();
    assert_eq!(recorded_503s, 0, "a request answered 503 is recorded");
    assert_eq!(rows.len(), ok.len() + recorded_503s, "rows for requests nobody was told about");

    let after = request_counts(&app).await;
    assert_eq!(after.0 - requests_before.0, ok.len() as f64, "accepted counter");
    assert_eq!(after.1 - requests_before.1, unavailable.len() as f64, "503 counters");
    let route = "route=\"/v0/event_bus_gateway/send_email\"";
    let timed_2xx = app.metric(&format!("ebg_http_request_duration_seconds_count{{{route},status=\"2xx\"}}")).await;
    let timed_5xx = app.metric(&format!("ebg_http_request_duration_seconds_count{{{route},status=\"5xx\"}}")).await;
    assert_eq!((timed_2xx, timed_5xx), (ok.len() as f64, unavailable.len() as f64), "latency histogram");
    let after_restore = seen.iter().rev().take(20).filter(|s| s.status == 200).count();
    assert!(after_restore >= 15, "the service recovers once the database is back ({after_restore}/20)");
    eprintln!(
        "{} ok, {} answered 503; commits unacknowledged {commit_unknown}: {withdrawn} withdrawn, {absent} absent",
        ok.len(),
        unavailable.len()
    );
    direct.close().await;
    let _database = app.stop().await;
}

/// `CLIENTS` clients send requests for distinct participants back to back until `stop`.
async fn run_load(address: String, seen: Arc<Mutex<Vec<Seen>>>, stop: tokio_util::sync::CancellationToken) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let url = format!("{address}{SEND_EMAIL}");
    futures::stream::iter(0..CLIENTS)
        .for_each_concurrent(CLIENTS, |c| {
            let (client, url, seen, stop) = (client.clone(), url.clone(), seen.clone(), stop.clone());
            async move {
                let mut i = 0;
                while !stop.is_cancelled() {
                    let participant = (700_000_000 + c * 100_000 + i).to_string();
                    i += 1;
                    let response = client
                        .post(&url)
                        .bearer_auth(token_for(&participant))
                        .json(&json!({ "template_id": TEMPLATE_ID }))
                        .send()
                        .await
                        .expect("the service answers every request");
                    let retry_after = response.headers().contains_key("retry-after");
                    seen.lock().unwrap().push(Seen { participant, status: response.status().as_u16(), retry_after });
                }
            }
        })
        .await;
}

/// (accepted, every 503 outcome) from `ebg_requests_total`.
async fn request_counts(app: &TestApp) -> (f64, f64) {
    let series =
        |outcome: &str| format!("ebg_requests_total{{api=\"send_email\",outcome=\"{outcome}\",channel=\"email\"}}");
    let accepted = app.metric(&series("accepted")).await;
    let mut unavailable = 0.0;
    for outcome in ["timeout", "unavailable", "commit_unknown"] {
        unavailable += app.metric(&series(outcome)).await;
    }
    (accepted, unavailable)
}

async fn in_doubt(app: &TestApp, resolution: &str) -> f64 {
    app.metric(&format!("ebg_accept_in_doubt_total{{resolution=\"{resolution}\"}}")).await
}
