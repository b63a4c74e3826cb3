//! `ebg-fakes <fake> [options]`: runs one upstream fake until killed, for bench/ and manual runs.
//!
//! ```text
//! ebg-fakes va-notify [--port N] [--latency-ms N] [--rate-limit N]
//! ebg-fakes bgs [--everyone NAME]
//! ```
//! Prints one line of `KEY=value` pairs on stdout once the fake is listening.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use ebg_testkit::{FakeBgs, FakeVaNotify};
use uuid::Uuid;

const USAGE: &str = "usage: ebg-fakes va-notify [--port N] [--latency-ms N] [--rate-limit N] | bgs [--everyone NAME]";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (fake, options) = match args.split_first() {
        Some((fake, options)) => (fake.as_str(), options),
        None => return usage_error("no fake named"),
    };
    let result = match fake {
        "va-notify" => run_va_notify(options).await,
        "bgs" => run_bgs(options).await,
        other => Err(format!("unknown fake `{other}`")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => usage_error(&message),
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("ebg-fakes: {message}\n{USAGE}");
    ExitCode::from(2)
}

/// The value after `--name`, parsed; `Ok(None)` when the flag is absent. Unknown flags are the caller's
/// concern (see [`check_flags`]).
fn flag<T: FromStr>(options: &[String], name: &str) -> Result<Option<T>, String> {
    let Some(position) = options.iter().position(|o| o == name) else { return Ok(None) };
    let value = options.get(position + 1).ok_or_else(|| format!("{name} needs a value"))?;
    value.parse().map(Some).map_err(|_| format!("{name}: cannot parse `{value}`"))
}

/// Rejects anything but `--flag value` pairs from `known`, so a typo does not silently use a default.
fn check_flags(options: &[String], known: &[&str]) -> Result<(), String> {
    for pair in options.chunks(2) {
        if !known.contains(&pair[0].as_str()) {
            return Err(format!("unknown option `{}`", pair[0]));
        }
    }
    Ok(())
}

async fn run_va_notify(options: &[String]) -> Result<(), String> {
    check_flags(options, &["--port", "--latency-ms", "--rate-limit"])?;
    let port: u16 = flag(options, "--port")?.unwrap_or(0);
    let latency_ms: u64 = flag(options, "--latency-ms")?.unwrap_or(0);
    let rate_limit: Option<u32> = flag(options, "--rate-limit")?;

    let fake = FakeVaNotify::bind(SocketAddr::from(([127, 0, 0, 1], port)), Uuid::new_v4(), Uuid::new_v4().to_string())
        .await
        .map_err(|e| format!("cannot listen on port {port}: {e}"))?;
    fake.set_latency(Duration::from_millis(latency_ms));
    fake.set_rate_limit(rate_limit);
    // A long run would otherwise keep every body in memory; counters stay available at /_fake/stats.
    fake.set_recording(false);

    println!("VA_NOTIFY_URL={} API_KEY={} PUSH_API_KEY={}", fake.base_url(), fake.api_key(), fake.push_api_key());
    std::io::stdout().flush().map_err(|e| format!("cannot write to stdout: {e}"))?;

    tokio::signal::ctrl_c().await.map_err(|e| format!("cannot wait for Ctrl-C: {e}"))?;
    Ok(())
}

/// A fake BGS on a random loopback port; `--everyone NAME` makes every participant known by that name.
async fn run_bgs(options: &[String]) -> Result<(), String> {
    check_flags(options, &["--everyone"])?;
    let everyone: Option<String> = flag(options, "--everyone")?;
    let fake = FakeBgs::start().await;
    if let Some(name) = everyone {
        fake.set_everyone(&name);
    }
    fake.set_recording(false);
    println!("BGS_URL={}", fake.base_url());
    std::io::stdout().flush().map_err(|e| format!("cannot write to stdout: {e}"))?;
    tokio::signal::ctrl_c().await.map_err(|e| format!("cannot wait for Ctrl-C: {e}"))?;
    Ok(())
}
