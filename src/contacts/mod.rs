//! Contact resolution: participant ID -> first name (SPEC §5, BGS.md).
//!
//! INTERFACE STUB: the BGS client lands in a follow-up commit; only the sandbox directory works here.

use std::fmt;

use crate::config::{ContactsConfig, ContactsMode};

/// What the email needs to know about a Veteran. PII: never logged, never stored.
#[derive(Clone, PartialEq, Eq)]
pub struct Contact {
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
    #[error("person not found")]
    NotFound,
    #[error("person has no first name")]
    NoFirstName,
    #[error("contact directory unavailable ({0})")]
    Transient(&'static str),
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
}

/// Failure to build the directory from configuration.
#[derive(Debug, thiserror::Error)]
#[error("contacts: {0}")]
pub struct ContactsInitError(pub String);

/// The contact directory the workers use (cached; cheap to clone).
#[derive(Clone)]
pub struct Contacts {
    sandbox_first_name: String,
}

impl Contacts {
    pub fn from_config(cfg: &ContactsConfig) -> Result<Self, ContactsInitError> {
        if cfg.mode == ContactsMode::Bgs {
            return Err(ContactsInitError("bgs mode is not available in this build".into()));
        }
        Ok(Self { sandbox_first_name: cfg.sandbox_first_name.clone() })
    }

    pub async fn lookup(&self, _participant_id: &str) -> Result<Contact, ContactError> {
        Ok(Contact { first_name: self.sandbox_first_name.clone() })
    }
}
