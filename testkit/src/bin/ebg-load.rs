//! `ebg-load`: an open-loop, constant-rate load generator for `POST /v0/event_bus_gateway/send_email`.
//!
//! ```text
//! ebg-load --url URL (--token JWT | --tokens-file PATH) --rate N --duration-s N [--max-in-flight N]
//! ```
//!
//! `--tokens-file` (one token per line) rotates through the tokens, one per request: distinct callers,
//! as needed to fill the service's token cache.
//!
//! wrk is closed-loop: it sends the next request only when one returns, so it measures peak throughput but
//! hides queueing (coordinated omission). Here request `i` is due at `start + i / rate` whatever happened to
//! earlier ones, and its latency is measured from that due time, so a stall shows up in p99 as it would for
//! EBG, whose Kafka consumers do not slow down because we do. Every request carries a fresh random
//! `template_id`, so the duplicate window never turns a request into a `duplicate`.
//!
//! Prints one line of `key=value` pairs (machine-readable, for bench/run) and exits non-zero on bad usage.
//! Loopback use only: the run is bounded by `--duration-s` and by `--max-in-flight` open requests.

use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use uuid::Uuid;

const USAGE: &str =
    "usage: ebg-load --url URL (--token JWT | --tokens-file PATH) --rate N --duration-s N [--max-in-flight N]";
/// How long stragglers may take after the last request was due before they count as errors.
const DRAIN: Duration = Duration::from_secs(10);

/// What one request ended as.
enum Outcome {
    /// An HTTP answer, with its latency from the request's due time.
    Answered { status: u16, latency: Duration },
    /// No answer: connection refused or reset, or the client timed out.
    Failed,
}

struct Options {
    url: String,
    tokens: Vec<String>,
    rate: f64,
    duration: Duration,
    max_in_flight: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse(&args) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("ebg-load: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(options).await {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("ebg-load: {message}");
            ExitCode::FAILURE
        }
    }
}

fn parse(args: &[String]) -> Result<Options, String> {
    const KNOWN: [&str; 6] = ["--url", "--token", "--tokens-file", "--rate", "--duration-s", "--max-in-flight"];
    for pair in args.chunks(2) {
        if !KNOWN.contains(&pair[0].as_str()) {
            return Err(format!("unknown option `{}`", pair[0]));
        }
    }
    let rate: f64 = required(args, "--rate")?;
    let seconds: f64 = required(args, "--duration-s")?;
    if !(rate.is_finite() && rate > 0.0 && seconds.is_finite() && seconds > 0.0) {
        return Err("--rate and --duration-s must be positive".into());
    }
    let tokens = match (flag::<String>(args, "--token")?, flag::<String>(args, "--tokens-file")?) {
        (Some(token), None) => vec![token],
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map_err(|e| format!("--tokens-file {path}: {e}"))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => return Err("exactly one of --token and --tokens-file is required".into()),
    };
    if tokens.is_empty() {
        return Err("--tokens-file has no tokens".into());
    }
    Ok(Options {
        url: required(args, "--url")?,
        tokens,
        rate,
        duration: Duration::from_secs_f64(seconds),
        max_in_flight: flag(args, "--max-in-flight")?.unwrap_or(2048),
    })
}

fn flag<T: FromStr>(args: &[String], name: &str) -> Result<Option<T>, String> {
    let Some(position) = args.iter().position(|a| a == name) else { return Ok(None) };
    let value = args.get(position + 1).ok_or_else(|| format!("{name} needs a value"))?;
    value.parse().map(Some).map_err(|_| format!("{name}: cannot parse `{value}`"))
}

fn required<T: FromStr>(args: &[String], name: &str) -> Result<T, String> {
    flag(args, name)?.ok_or_else(|| format!("{name} is required"))
}

async fn run(options: Options) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        // Open loop may need more sockets than a closed loop; keep them all for reuse.
        .pool_max_idle_per_host(options.max_in_flight)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let authorizations: Arc<Vec<String>> = Arc::new(options.tokens.iter().map(|t| format!("Bearer {t}")).collect());
    let url: Arc<str> = options.url.into();

    let total = (options.rate * options.duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / options.rate);
    let in_flight = Arc::new(Semaphore::new(options.max_in_flight));
    let (results, mut received) = mpsc::unbounded_channel::<Outcome>();

    let start = Instant::now();
    // Requests that could not start on time because max-in-flight was reached: the service fell behind.
    let mut shed = 0u64;
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            shed += 1;
            continue;
        };
        let (client, url, authorizations, results) =
            (client.clone(), url.clone(), authorizations.clone(), results.clone());
        tokio::spawn(async move {
            let body = format!(r#"{{"template_id":"{}"}}"#, Uuid::new_v4());
            let sent = client
                .post(&*url)
                .header("authorization", &authorizations[(i % authorizations.len() as u64) as usize])
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            let outcome = match sent {
                // Read the (empty) body so the connection goes back to the pool.
                Ok(response) => {
                    let status = response.status().as_u16();
                    let _ = response.bytes().await;
                    Outcome::Answered { status, latency: due.elapsed() }
                }
                Err(_) => Outcome::Failed,
            };
            drop(permit);
            // The receiver outlives every sender unless the drain deadline passed; then the result is moot.
            let _ = results.send(outcome);
        });
    }
    drop(results);
    let sending_took = start.elapsed();

    let mut latencies: Vec<Duration> = Vec::with_capacity(total as usize);
    let (mut ok, mut non_2xx, mut failed) = (0u64, 0u64, 0u64);
    let deadline = tokio::time::Instant::now() + DRAIN;
    while let Ok(Some(outcome)) = tokio::time::timeout_at(deadline, received.recv()).await {
        match outcome {
            Outcome::Answered { status, latency } => {
                if (200..300).contains(&status) {
                    ok += 1;
                } else {
                    non_2xx += 1;
                }
                latencies.push(latency);
            }
            Outcome::Failed => failed += 1,
        }
    }
    let unanswered = total - shed - ok - non_2xx - failed;
    latencies.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(format!(
        "target_rps={:.0} achieved_rps={:.1} sent={} ok={} non_2xx={} failed={} shed={} unanswered={} \
         p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        options.rate,
        (total - shed) as f64 / sending_took.as_secs_f64(),
        total - shed,
        ok,
        non_2xx,
        failed,
        shed,
        unanswered,
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.90)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
    ))
}

/// Nearest-rank percentile of sorted samples; zero when there are none.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 0.50), Duration::from_millis(50));
        assert_eq!(percentile(&samples, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&[], 0.99), Duration::ZERO);
    }

    #[test]
    fn rejects_unknown_and_missing_options() {
        let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert!(parse(&args("--url u --token t --rate 10 --duration-s 1")).is_ok());
        assert!(parse(&args("--url u --token t --rate 10")).is_err());
        assert!(parse(&args("--url u --token t --rate 0 --duration-s 1")).is_err());
        assert!(parse(&args("--url u --token t --rate 10 --duration-s 1 --bogus 1")).is_err());
    }
}
