//! A consecutive-failure circuit breaker, so a failing VA Notify is not hammered (SPEC §6, §14).
//!
//! Every method takes `now`, which keeps the state machine free of hidden clocks: the client passes
//! `Instant::now()`, tests pass whatever instant they need.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::BreakerState;

/// How many calls the breaker would let start now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admits {
    Any,
    /// Half-open: one trial call decides.
    OneTrial,
    /// Open, or a trial call is outstanding.
    None,
}

/// The breaker refused a call; no request may be made.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Rejected;

/// How a finished call bears on VA Notify's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallHealth {
    /// VA Notify answered coherently, including 4xx and the daily limit: it is up.
    Healthy,
    /// A retryable failure (transport, timeout, 5xx, per-minute 429).
    Failed,
}

#[derive(Debug)]
enum State {
    Closed {
        consecutive_failures: u32,
    },
    Open {
        until: Instant,
    },
    /// Past the open period. At most one trial call runs at a time; its result decides.
    HalfOpen {
        trial_in_flight: bool,
    },
}

/// Shared by all clones of a client; the lock is held only for a state transition, never across an await.
#[derive(Debug)]
pub(crate) struct CircuitBreaker {
    failure_threshold: u32,
    open_for: Duration,
    state: Mutex<State>,
}

impl CircuitBreaker {
    /// `failure_threshold` must be at least 1 (checked by the caller).
    pub(crate) fn new(failure_threshold: u32, open_for: Duration) -> Self {
        Self { failure_threshold, open_for, state: Mutex::new(State::Closed { consecutive_failures: 0 }) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a plain enum updated in one assignment, so a panic elsewhere cannot leave it torn.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state as seen at `now`; an open breaker whose period has passed reports `HalfOpen`.
    pub(crate) fn state(&self, now: Instant) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if now < until => BreakerState::Open,
            State::Open { .. } | State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// How many calls could start at `now`: any while closed, one trial once the open period is over
    /// and no trial runs, none while open or while a trial is outstanding.
    pub(crate) fn admits(&self, now: Instant) -> Admits {
        match *self.lock() {
            State::Closed { .. } => Admits::Any,
            State::Open { until } if now < until => Admits::None,
            State::Open { .. } | State::HalfOpen { trial_in_flight: false } => Admits::OneTrial,
            State::HalfOpen { trial_in_flight: true } => Admits::None,
        }
    }

    /// Whether a call could be let through at `now`, without taking a permit. Used to fail fast before
    /// queueing on the rate limiter.
    pub(crate) fn check(&self, now: Instant) -> Result<(), Rejected> {
        match *self.lock() {
            State::Closed { .. } | State::HalfOpen { trial_in_flight: false } => Ok(()),
            State::Open { until } if now >= until => Ok(()),
            State::Open { .. } | State::HalfOpen { trial_in_flight: true } => Err(Rejected),
        }
    }

    /// Takes a permit for one call. In half-open state only one trial permit exists at a time.
    pub(crate) fn try_acquire(&self, now: Instant) -> Result<Permit<'_>, Rejected> {
        let mut state = self.lock();
        let trial = match *state {
            State::Closed { .. } => false,
            State::Open { until } if now < until => return Err(Rejected),
            State::HalfOpen { trial_in_flight: true } => return Err(Rejected),
            State::Open { .. } | State::HalfOpen { trial_in_flight: false } => {
                *state = State::HalfOpen { trial_in_flight: true };
                true
            }
        };
        Ok(Permit { breaker: self, trial, settled: false })
    }

    fn settle(&self, trial: bool, health: CallHealth, now: Instant) {
        let mut state = self.lock();
        match (&mut *state, trial, health) {
            (State::Closed { consecutive_failures }, false, CallHealth::Healthy) => *consecutive_failures = 0,
            (State::Closed { consecutive_failures }, false, CallHealth::Failed) => {
                *consecutive_failures += 1;
                if *consecutive_failures >= self.failure_threshold {
                    tracing::warn!(
                        failures = *consecutive_failures,
                        open_seconds = self.open_for.as_secs(),
                        "VA Notify circuit breaker opened"
                    );
                    *state = State::Open { until: now + self.open_for };
                }
            }
            (State::HalfOpen { .. }, true, CallHealth::Healthy) => {
                tracing::info!("VA Notify circuit breaker closed after a successful trial call");
                *state = State::Closed { consecutive_failures: 0 };
            }
            (State::HalfOpen { .. }, true, CallHealth::Failed) => {
                tracing::warn!(open_seconds = self.open_for.as_secs(), "VA Notify trial call failed; breaker reopened");
                *state = State::Open { until: now + self.open_for };
            }
            // A call that started while closed but finished after the breaker opened is stale news.
            _ => {}
        }
    }

    /// A trial permit dropped unsettled (its caller was cancelled) frees the slot for another trial.
    fn release_trial(&self) {
        let mut state = self.lock();
        if let State::HalfOpen { trial_in_flight } = &mut *state {
            *trial_in_flight = false;
        }
    }
}

/// Leave to make one call. Report its result with [`Permit::settle`].
#[must_use = "a permit must be settled with the call's result"]
pub(crate) struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    trial: bool,
    settled: bool,
}

impl Permit<'_> {
    /// Records the call's result.
    pub(crate) fn settle(mut self, health: CallHealth, now: Instant) {
        self.settled = true;
        self.breaker.settle(self.trial, health, now);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.trial && !self.settled {
            self.breaker.release_trial();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN_FOR: Duration = Duration::from_secs(30);

    fn fail(b: &CircuitBreaker, now: Instant) {
        b.try_acquire(now).unwrap().settle(CallHealth::Failed, now);
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let b = CircuitBreaker::new(3, OPEN_FOR);
        let t0 = Instant::now();
        fail(&b, t0);
        fail(&b, t0);
        assert_eq!(b.state(t0), BreakerState::Closed);
        fail(&b, t0);
        assert_eq!(b.state(t0), BreakerState::Open);
        assert_eq!(b.admits(t0), Admits::None);
        assert_eq!(b.check(t0), Err(Rejected));
        assert!(b.try_acquire(t0 + Duration::from_secs(29)).is_err());
    }

    #[test]
    fn a_healthy_call_resets_the_count() {
        let b = CircuitBreaker::new(3, OPEN_FOR);
        let t0 = Instant::now();
        fail(&b, t0);
        fail(&b, t0);
        b.try_acquire(t0).unwrap().settle(CallHealth::Healthy, t0);
        fail(&b, t0);
        fail(&b, t0);
        assert_eq!(b.state(t0), BreakerState::Closed);
    }

    #[test]
    fn half_open_lets_exactly_one_trial_through() {
        let b = CircuitBreaker::new(1, OPEN_FOR);
        let t0 = Instant::now();
        fail(&b, t0);
        let later = t0 + OPEN_FOR;
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        assert_eq!(b.check(later), Ok(()));
        assert_eq!(b.admits(later), Admits::OneTrial);
        let trial = b.try_acquire(later).unwrap();
        assert_eq!(b.check(later), Err(Rejected));
        assert_eq!(b.admits(later), Admits::None, "nothing more while the trial is outstanding");
        assert!(b.try_acquire(later).is_err(), "second trial must wait");
        trial.settle(CallHealth::Healthy, later);
        assert_eq!(b.state(later), BreakerState::Closed);
        assert!(b.try_acquire(later).is_ok());
    }

    #[test]
    fn failed_trial_reopens_for_a_full_period() {
        let b = CircuitBreaker::new(1, OPEN_FOR);
        let t0 = Instant::now();
        fail(&b, t0);
        let t1 = t0 + OPEN_FOR + Duration::from_secs(5);
        fail(&b, t1);
        assert_eq!(b.state(t1 + OPEN_FOR - Duration::from_secs(1)), BreakerState::Open);
        assert_eq!(b.state(t1 + OPEN_FOR), BreakerState::HalfOpen);
    }

    #[test]
    fn dropped_trial_frees_the_slot() {
        let b = CircuitBreaker::new(1, OPEN_FOR);
        let t0 = Instant::now();
        fail(&b, t0);
        let later = t0 + OPEN_FOR;
        drop(b.try_acquire(later).unwrap());
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        assert!(b.try_acquire(later).is_ok());
    }

    #[test]
    fn stale_results_do_not_move_an_open_breaker() {
        let b = CircuitBreaker::new(2, OPEN_FOR);
        let t0 = Instant::now();
        let slow = b.try_acquire(t0).unwrap();
        fail(&b, t0);
        fail(&b, t0);
        assert_eq!(b.state(t0), BreakerState::Open);
        slow.settle(CallHealth::Healthy, t0);
        assert_eq!(b.state(t0), BreakerState::Open);
    }
}
