//! Logging setup and the keyed hash that stands in for participant ids in logs.

use std::io::IsTerminal;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::{LogFormat, TelemetryConfig};

/// PostgreSQL NOTICEs (severity below WARNING) that sqlx logs at info, such as
/// `relation "_sqlx_migrations" already exists` on every start: chatter, not news. Warnings and errors
/// the server sends still pass.
const SQLX_NOTICES: &str = "sqlx::postgres::notice";

/// Installs the global tracing subscriber. `RUST_LOG` overrides the configured filter.
/// Colours only when stderr is a terminal, so files and log collectors get plain text.
/// Safe to call more than once (later calls do nothing), which tests rely on.
pub fn init(cfg: &TelemetryConfig) {
    let directives = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
    let filter = filter(directives.as_deref().unwrap_or(&cfg.log_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match cfg.log_format {
        LogFormat::Json => {
            builder.json().flatten_event(true).with_current_span(true).with_span_events(FmtSpan::NONE).try_init()
        }
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

/// The log filter for `directives` (RUST_LOG syntax); sqlx's notices are held at `warn` unless the
/// directives name their target themselves. An unparsable directive is ignored, as `RUST_LOG` always was.
fn filter(directives: &str) -> EnvFilter {
    let mut filter = EnvFilter::builder().parse_lossy(directives);
    if !directives.contains(SQLX_NOTICES) {
        if let Ok(directive) = format!("{SQLX_NOTICES}=warn").parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// Keyed hash of participant ids: log lines can be correlated per Veteran without revealing the id.
#[derive(Clone)]
pub struct PiiHasher {
    key: Vec<u8>,
}

impl PiiHasher {
    pub fn new(key: &str) -> Self {
        Self { key: key.as_bytes().to_vec() }
    }

    /// First 16 hex characters of HMAC-SHA256(key, participant_id).
    pub fn participant(&self, participant_id: &str) -> String {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(participant_id.as_bytes());
        let digest = mac.finalize().into_bytes();
        hex::encode(&digest[..8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_keyed_and_hides_the_id() {
        let a = PiiHasher::new("k1");
        let b = PiiHasher::new("k2");
        assert_eq!(a.participant("600061742"), a.participant("600061742"));
        assert_ne!(a.participant("600061742"), b.participant("600061742"));
        assert!(!a.participant("600061742").contains("600061742"));
        assert_eq!(a.participant("1").len(), 16);
    }
}
