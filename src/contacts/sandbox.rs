//! The sandbox directory for local runs: everyone has the same configured first name.

use super::Contact;

/// Answers every lookup with the configured name, without any I/O.
pub(crate) struct SandboxDirectory {
    first_name: String,
}

impl SandboxDirectory {
    pub(crate) fn new(first_name: &str) -> Self {
        Self { first_name: first_name.to_owned() }
    }

    pub(crate) fn lookup(&self) -> Contact {
        Contact { first_name: self.first_name.clone() }
    }
}
