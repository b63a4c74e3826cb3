//! Contact resolution: participant ID -> first name (SPEC §5, BGS.md), and participant ID -> ICN ([`Mpi`],
//! CHANNELS.md §2).
//!
//! Workers call [`Contacts::lookup`]. Behind it sits a [`ContactDirectory`] (BGS, or the sandbox for local
//! runs) and, for BGS, an in-memory [`cache::ContactCache`] that also coalesces concurrent lookups of one id.
//!
//! Privacy: first names live only in the cache and in the returned [`Contact`], whose `Debug` is redacted.
//! Nothing here logs or labels a participant id, not even hashed: the worker's span already carries the keyed
//! hash, and our spans nest inside it.

mod bgs;
mod cache;
mod mpi;
mod parse;
mod sandbox;

use std::fmt;
use std::sync::Arc;

use self::bgs::BgsClient;
use self::cache::{ContactCache, Origin};
pub use self::mpi::{Identity, Mpi, MpiError, MpiInitError};
use self::sandbox::SandboxDirectory;
use crate::config::{ContactsConfig, ContactsMode};

/// What the email needs to know about a Veteran. PII: never logged, never stored.
#[derive(Clone, PartialEq, Eq)]
pub struct Contact {
    /// Capitalized first name (`Wesley`), as sent to VA Notify.
    pub first_name: String,
}

impl fmt::Debug for Contact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Contact { first_name: [redacted] }")
    }
}

/// Why a lookup gave no contact. `reason()` is a bounded label for metrics and `status_reason`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContactError {
    /// The directory knows no such participant: the notification is skipped, not retried.
    #[error("person not found")]
    NotFound,
    /// The person exists but has no usable first name: skipped, not retried.
    #[error("person has no first name")]
    NoFirstName,
    /// The directory could not answer now (timeout, connection, 5xx, transient fault): retry with backoff.
    #[error("contact directory unavailable ({0})")]
    Transient(&'static str),
    /// Our own configuration is wrong (e.g. BGS does not know our logon): final, and loud in logs.
    #[error("contact directory misconfigured ({0})")]
    Misconfigured(&'static str),
}

impl ContactError {
    /// Bounded, PII-free label: `person_not_found`, `no_first_name`, or the inner label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound => "person_not_found",
            Self::NoFirstName => "no_first_name",
            Self::Transient(r) | Self::Misconfigured(r) => r,
        }
    }

    /// Transient faults are retried with backoff; the rest end the notification.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Transient(_))
    }

    /// The `outcome` label of `ebg_contact_lookups_total`.
    fn outcome(result: &Result<Contact, Self>) -> &'static str {
        match result {
            Ok(_) => "found",
            Err(Self::NotFound) => "not_found",
            Err(Self::NoFirstName) => "no_first_name",
            Err(Self::Transient(_)) => "transient",
            Err(Self::Misconfigured(_)) => "misconfigured",
        }
    }
}

/// Failure to build the directory from configuration; the message names the config keys at fault.
#[derive(Debug, thiserror::Error)]
#[error("contacts: {0}")]
pub struct ContactsInitError(pub String);

/// Where first names come from.
///
/// An enum rather than a trait object: the set of directories is closed and chosen by `contacts.mode`, each
/// lookup is one `async fn` call without boxing, and tests reach BGS through a local fake BGS over HTTP
/// rather than through a substitute implementation. ICNs come from [`Mpi`], a directory of its own: it answers
/// a different question (who the person is in MPI) with different failures.
#[expect(clippy::large_enum_variant, reason = "built once per process and kept behind an Arc")]
enum ContactDirectory {
    Bgs(BgsClient),
    Sandbox(SandboxDirectory),
}

impl ContactDirectory {
    async fn lookup(&self, participant_id: &str) -> Result<Contact, ContactError> {
        match self {
            Self::Bgs(client) => client.find_person(participant_id).await,
            Self::Sandbox(sandbox) => Ok(sandbox.lookup()),
        }
    }

    /// The `source` metric label when this directory answered.
    fn source(&self) -> &'static str {
        match self {
            Self::Bgs(_) => "bgs",
            Self::Sandbox(_) => "sandbox",
        }
    }
}

struct Inner {
    directory: ContactDirectory,
    /// `None` for the sandbox, which answers instantly and holds no PII worth remembering.
    cache: Option<ContactCache>,
}

/// The contact directory the workers use (cached; cheap to clone).
#[derive(Clone)]
pub struct Contacts {
    inner: Arc<Inner>,
}

impl Contacts {
    /// Builds the directory `cfg.mode` names; in `bgs` mode validates the BGS settings and sets up the cache.
    pub fn from_config(cfg: &ContactsConfig) -> Result<Self, ContactsInitError> {
        let inner = match cfg.mode {
            ContactsMode::Sandbox => {
                if cfg.sandbox_first_name.trim().is_empty() {
                    return Err(ContactsInitError("contacts.sandbox_first_name: required in sandbox mode".into()));
                }
                Inner {
                    directory: ContactDirectory::Sandbox(SandboxDirectory::new(&cfg.sandbox_first_name)),
                    cache: None,
                }
            }
            ContactsMode::Bgs => Inner {
                directory: ContactDirectory::Bgs(BgsClient::from_config(cfg)?),
                cache: Some(ContactCache::new(
                    crate::memory::CacheBounds { max_entries: cfg.cache_capacity, max_bytes: cfg.cache_max_bytes },
                    cfg.cache_ttl(),
                    cfg.negative_cache_ttl(),
                )),
            },
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// Sets the cache's size gauges (`ebg_cache_entries` / `ebg_cache_bytes`, `cache="contacts"`); the
    /// sandbox keeps no cache.
    pub async fn record_cache_size(&self) {
        if let Some(cache) = &self.inner.cache {
            let (entries, bytes) = cache.size().await;
            crate::memory::record_cache_size("contacts", entries, bytes);
        }
    }

    /// Resolves a participant id to a contact.
    ///
    /// `NotFound` and `NoFirstName` are answers (cached for `negative_cache_ttl_seconds`); `Transient` and
    /// `Misconfigured` are failures and never cached. Concurrent lookups of one id make one upstream call.
    #[tracing::instrument(name = "contacts.lookup", skip_all, fields(source, outcome))]
    pub async fn lookup(&self, participant_id: &str) -> Result<Contact, ContactError> {
        let directory = &self.inner.directory;
        let (result, source) = match &self.inner.cache {
            Some(cache) => match cache.get_or_fetch(participant_id, directory.lookup(participant_id)).await {
                (result, Origin::Cache) => (result, "cache"),
                (result, Origin::Directory) => (result, directory.source()),
            },
            None => (directory.lookup(participant_id).await, directory.source()),
        };
        let outcome = ContactError::outcome(&result);
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

    #[tokio::test]
    async fn sandbox_answers_everyone_with_the_configured_name() {
        let env = [("EBG_CONTACTS__SANDBOX_FIRST_NAME".to_owned(), "Tester".to_owned())];
        let contacts = Contacts::from_config(&Config::load_from(env).expect("config").contacts).expect("sandbox");
        for pid in ["1", "600043201", ""] {
            assert_eq!(contacts.lookup(pid).await, Ok(Contact { first_name: "Tester".into() }));
        }
    }

    #[test]
    fn debug_never_shows_the_name() {
        assert!(!format!("{:?}", Contact { first_name: "Wesley".into() }).contains("Wesley"));
    }

    #[test]
    fn reasons_and_retryability() {
        let cases = [
            (ContactError::NotFound, "person_not_found", false),
            (ContactError::NoFirstName, "no_first_name", false),
            (ContactError::Transient("bgs_timeout"), "bgs_timeout", true),
            (ContactError::Misconfigured("bgs_logon_not_found"), "bgs_logon_not_found", false),
        ];
        for (error, reason, retryable) in cases {
            assert_eq!((error.reason(), error.is_retryable()), (reason, retryable), "{error:?}");
        }
    }
}
