//! Notification states (SPEC §10) and the names stored in `notifications.status`.

use std::fmt;

/// Where a notification is in its life. Terminal states carry a reason in `status_reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Accepted and due for delivery.
    Queued,
    /// Leased by a worker that is delivering it.
    Sending,
    /// Waiting for its next attempt after a retryable failure.
    RetryWait,
    /// VA Notify accepted it (201).
    Sent,
    /// VA Notify reported delivery.
    Delivered,
    /// VA Notify reported a temporary failure.
    TemporaryFailure,
    /// VA Notify reported a permanent failure.
    PermanentFailure,
    /// Ended by a non-retryable error.
    Failed,
    /// Ran out of attempts.
    Dead,
    /// Nothing to send: the person or their first name was not found.
    Skipped,
    /// The toggle was off for this participant; kept so it can be released later.
    Suppressed,
    /// A repeat of a recent request; not sent.
    Duplicate,
}

impl Status {
    /// Every state, in lifecycle order.
    pub const ALL: [Status; 12] = [
        Self::Queued,
        Self::Sending,
        Self::RetryWait,
        Self::Sent,
        Self::Delivered,
        Self::TemporaryFailure,
        Self::PermanentFailure,
        Self::Failed,
        Self::Dead,
        Self::Skipped,
        Self::Suppressed,
        Self::Duplicate,
    ];

    /// The name stored in the database and shown in API responses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::RetryWait => "retry_wait",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::TemporaryFailure => "temporary_failure",
            Self::PermanentFailure => "permanent_failure",
            Self::Failed => "failed",
            Self::Dead => "dead",
            Self::Skipped => "skipped",
            Self::Suppressed => "suppressed",
            Self::Duplicate => "duplicate",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("nope"), None);
    }
}
