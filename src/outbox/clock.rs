//! The worker's wall clock for wall-clock policies (SMS quiet hours). It reads the system clock; a test
//! that runs the application in its own process may pin it to an instant, to drive quiet hours at 22:30
//! Eastern whatever the hour it runs at. There is no configuration key for it, so a deployment cannot
//! shift time.
//!
//! Only the quiet-hours decision reads it: leases, retries and "due" are the database's `now()`, and a
//! pinned clock must not move them.

use std::sync::{Arc, PoisonError, RwLock};

use chrono::{DateTime, Utc};

/// The system clock unless pinned. Clones share the pin (the claim loop's copy of the worker sees it).
#[derive(Clone, Debug, Default)]
pub struct Clock {
    pinned: Arc<RwLock<Option<DateTime<Utc>>>>,
}

impl Clock {
    /// The pinned instant, else the system clock's now.
    pub fn now(&self) -> DateTime<Utc> {
        let pinned = *self.pinned.read().unwrap_or_else(PoisonError::into_inner);
        pinned.unwrap_or_else(Utc::now)
    }

    /// Stops the clock at `at` (tests in the application's process).
    pub fn pin(&self, at: DateTime<Utc>) {
        *self.pinned.write().unwrap_or_else(PoisonError::into_inner) = Some(at);
    }

    /// Back to the system clock.
    pub fn unpin(&self) {
        *self.pinned.write().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_is_shared_by_clones_and_can_be_lifted() {
        let clock = Clock::default();
        let copy = clock.clone();
        let at: DateTime<Utc> = "2026-12-02T03:30:00Z".parse().unwrap();
        clock.pin(at);
        assert_eq!(copy.now(), at);
        copy.unpin();
        assert!(clock.now() > at - chrono::TimeDelta::days(365 * 10), "the system clock again");
        assert_ne!(clock.now(), at);
    }
}
