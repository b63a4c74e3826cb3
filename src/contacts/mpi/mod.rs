//! ICN resolution: participant ID -> ICN (and legal given name) through MPI FHIR (CHANNELS.md §2).
//!
//! SMS and push need the ICN (push sends it; their toggles are keyed by it). Behind [`Mpi::lookup`] sits the
//! FHIR client over mutual TLS, or the sandbox for local runs, and for FHIR the same in-memory cache as BGS
//! (TTL, negative cache, coalesced lookups of one id).
//!
//! Privacy: ICNs and names live only in the cache and in the returned [`Identity`], whose `Debug` is
//! redacted. Nothing here logs or labels a participant id or an ICN.

mod fhir;
mod parse;
mod sandbox;

use std::fmt;
use std::sync::Arc;

use self::fhir::FhirClient;
use super::cache::{Cacheable, Freshness, LookupCache, Origin};
use crate::config::{MpiConfig, MpiMode};

/// Who a participant is in MPI. PII: never logged, never stored.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// The plain ICN (`1012345678V123456`, no `^NI^200M^USVHA^P`), as sent to VA Notify for push.
    pub icn: String,
    /// `given[0]` of the official name, capitalized like BGS names; `None` when MPI has none (and in sandbox).
    pub first_name: Option<String>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Identity { icn: [redacted], first_name: [redacted] }")
    }
}

/// Why a lookup gave no identity. Same design as [`super::ContactError`]: `reason()` is a bounded label for
/// metrics and `status_reason`, `is_retryable()` tells the worker whether to back off and try again.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MpiError {
    /// MPI knows no such participant (`GCID01`, `557`, `BR001`): skipped, not retried.
    #[error("person not found in MPI")]
    NotFound,
    /// The Patient names no usable ICN: skipped, not retried.
    #[error("person has no ICN")]
    NoIcn,
    /// The Patient has a `deceasedDateTime`: never notify (skipped, reason `deceased`).
    #[error("person is deceased")]
    Deceased,
    /// MPI could not answer now (transport, timeout, 429/500/502/503/504, unreadable 200): retry with backoff.
    #[error("MPI unavailable ({0})")]
    Transient(&'static str),
    /// MPI refused this request for good (`BRNOARG01`, `556`, unknown codes, other HTTP errors): final.
    #[error("MPI refused the lookup ({0})")]
    Rejected(&'static str),
    /// MPI refused our credentials (401/403): final, and loud in logs.
    #[error("MPI client misconfigured ({0})")]
    Misconfigured(&'static str),
}

impl MpiError {
    /// Bounded, PII-free label: `person_not_found`, `no_icn`, `deceased`, or the inner label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound => "person_not_found",
            Self::NoIcn => "no_icn",
            Self::Deceased => "deceased",
            Self::Transient(r) | Self::Rejected(r) | Self::Misconfigured(r) => r,
        }
    }

    /// Transient faults are retried with backoff; the rest end the channel.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Transient(_))
    }

    /// Whether the channel ends `skipped` (an answer about the person) rather than failed.
    pub fn is_skip(&self) -> bool {
        matches!(self, Self::NotFound | Self::NoIcn | Self::Deceased)
    }

    /// The `outcome` label of `ebg_contact_lookups_total`.
    fn outcome(result: &Result<Identity, Self>) -> &'static str {
        match result {
            Ok(_) => "found",
            Err(Self::NotFound) => "not_found",
            Err(Self::NoIcn) => "no_icn",
            Err(Self::Deceased) => "deceased",
            Err(Self::Transient(_)) => "transient",
            Err(Self::Rejected(_)) => "final",
            Err(Self::Misconfigured(_)) => "misconfigured",
        }
    }
}

impl Cacheable for Result<Identity, MpiError> {
    fn freshness(&self) -> Freshness {
        match self {
            Ok(_) => Freshness::Positive,
            Err(e) if e.is_skip() => Freshness::Negative,
            Err(_) => Freshness::Uncached,
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Ok(identity) => identity.icn.capacity() + identity.first_name.as_ref().map_or(0, String::capacity),
            Err(_) => 0,
        }
    }
}

/// Failure to build the MPI client from configuration; the message names the config keys at fault.
#[derive(Debug, thiserror::Error)]
#[error("mpi: {0}")]
pub struct MpiInitError(pub String);

/// Where ICNs come from; an enum for the reasons [`super::Contacts`] gives.
enum Directory {
    Fhir { client: FhirClient, cache: LookupCache<Result<Identity, MpiError>> },
    Sandbox,
}

/// The ICN directory (cached; cheap to clone).
#[derive(Clone)]
pub struct Mpi {
    directory: Arc<Directory>,
}

impl Mpi {
    /// Builds the directory `cfg.mode` names; in `fhir` mode reads the PEM files and sets up the cache.
    pub fn from_config(cfg: &MpiConfig) -> Result<Self, MpiInitError> {
        let directory = match cfg.mode {
            MpiMode::Sandbox => Directory::Sandbox,
            MpiMode::Fhir => Directory::Fhir {
                client: FhirClient::from_config(cfg)?,
                cache: LookupCache::new(
                    crate::memory::CacheBounds { max_entries: cfg.cache_capacity, max_bytes: cfg.cache_max_bytes },
                    cfg.cache_ttl(),
                    cfg.negative_cache_ttl(),
                ),
            },
        };
        Ok(Self { directory: Arc::new(directory) })
    }

    /// Sets the cache's size gauges (`ebg_cache_entries` / `ebg_cache_bytes`, `cache="mpi"`); the sandbox
    /// keeps no cache.
    pub async fn record_cache_size(&self) {
        if let Directory::Fhir { cache, .. } = &*self.directory {
            let (entries, bytes) = cache.size().await;
            crate::memory::record_cache_size("mpi", entries, bytes);
        }
    }

    /// Resolves a participant id to an identity.
    ///
    /// `NotFound`, `NoIcn` and `Deceased` are answers (cached for `negative_cache_ttl_seconds`); the other
    /// errors are failures and never cached. Concurrent lookups of one id make one MPI call.
    #[tracing::instrument(name = "mpi.lookup", skip_all, fields(source, outcome))]
    pub async fn lookup(&self, participant_id: &str) -> Result<Identity, MpiError> {
        let (result, source) = match &*self.directory {
            Directory::Fhir { client, cache } => {
                match cache.get_or_fetch(participant_id, client.read_patient(participant_id)).await {
                    (result, Origin::Cache) => (result, "mpi_cache"),
                    (result, Origin::Directory) => (result, "mpi"),
                }
            }
            Directory::Sandbox => (Ok(sandbox::lookup(participant_id)), "mpi_sandbox"),
        };
        let outcome = MpiError::outcome(&result);
        let span = tracing::Span::current();
        span.record("source", source);
        span.record("outcome", outcome);
        metrics::counter!("ebg_contact_lookups_total", "outcome" => outcome, "source" => source).increment(1);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::time::Duration;

    #[test]
    fn debug_never_shows_the_icn_or_name() {
        let shown = format!("{:?}", Identity { icn: "1012345678V123456".into(), first_name: Some("Jane".into()) });
        assert!(!shown.contains("1012345678V123456") && !shown.contains("Jane"), "{shown}");
    }

    #[test]
    fn reasons_retryability_and_skips() {
        let cases = [
            (MpiError::NotFound, "person_not_found", false, true),
            (MpiError::NoIcn, "no_icn", false, true),
            (MpiError::Deceased, "deceased", false, true),
            (MpiError::Transient("mpi_timeout"), "mpi_timeout", true, false),
            (MpiError::Rejected("mpi_error_556"), "mpi_error_556", false, false),
            (MpiError::Misconfigured("mpi_http_403"), "mpi_http_403", false, false),
        ];
        for (error, reason, retryable, skip) in cases {
            assert_eq!((error.reason(), error.is_retryable(), error.is_skip()), (reason, retryable, skip), "{error:?}");
        }
    }

    #[tokio::test]
    async fn the_identity_cache_is_bounded_by_bytes_too() {
        let bounds = crate::memory::CacheBounds { max_entries: 1_000_000, max_bytes: 20_000 };
        let long = Duration::from_secs(3600);
        let cache: LookupCache<Result<Identity, MpiError>> = LookupCache::new(bounds, long, long);
        let identity = || Identity { icn: "1012345678V123456".into(), first_name: Some("Jane".into()) };
        for i in 0..500 {
            cache.get_or_fetch(&i.to_string(), async { Ok(identity()) }).await.0.unwrap();
        }
        let (entries, bytes) = cache.size().await;
        assert!(bytes <= 20_000 && (1..100).contains(&entries), "{entries} entries, {bytes} bytes");
        let heavier = Ok(Identity { icn: "1".repeat(4096), first_name: None });
        assert!(heavier.heap_bytes() >= 4096 && Err::<Identity, _>(MpiError::NotFound).heap_bytes() == 0);
    }

    #[tokio::test]
    async fn sandbox_is_the_default_and_answers_everyone() {
        let mpi = Mpi::from_config(&Config::load_from(Vec::new()).expect("config").mpi).expect("sandbox");
        let a = mpi.lookup("600043201").await.expect("found");
        assert_eq!(mpi.lookup("600043201").await.expect("found").icn, a.icn);
    }

    #[test]
    fn fhir_mode_lists_every_missing_setting() {
        let env = [("EBG_MPI__MODE", "fhir"), ("EBG_MPI__CA_PATH", "/nonexistent/ca.pem")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let err = Config::load_from(env).expect_err("fhir without settings is refused").to_string();
        for needle in ["mpi.url", "mpi.sender_id", "mpi.client_cert_path", "mpi.client_key_path", "mpi.ca_path"] {
            assert!(err.contains(needle), "{needle} missing from {err}");
        }
    }
}
