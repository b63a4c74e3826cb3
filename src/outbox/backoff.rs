//! Retry delays: exponential growth from a base, capped, with jitter so that a burst of failures
//! (VA Notify down for a minute) does not come back as a synchronized burst of retries.

use std::time::Duration;

/// Delay before retry number `attempt` (1 = first retry): `base * 2^(attempt-1)` capped at `max`,
/// then drawn uniformly from the upper half of that value ("equal jitter"), so it never collapses to 0.
/// `unit_random` is a uniform draw in [0, 1).
pub fn retry_delay(attempt: u32, base: Duration, max: Duration, unit_random: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(31);
    let ceiling = base.saturating_mul(1u32 << exponent).min(max);
    let half = ceiling / 2;
    half + half.mul_f64(unit_random.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn grows_exponentially_then_caps() {
        assert_eq!(retry_delay(1, S(30), S(3600), 1.0), S(30));
        assert_eq!(retry_delay(2, S(30), S(3600), 1.0), S(60));
        assert_eq!(retry_delay(3, S(30), S(3600), 1.0), S(120));
        assert_eq!(retry_delay(10, S(30), S(3600), 1.0), S(3600));
        assert_eq!(retry_delay(1000, S(30), S(3600), 1.0), S(3600));
    }

    #[test]
    fn jitter_keeps_at_least_half() {
        assert_eq!(retry_delay(1, S(30), S(3600), 0.0), S(15));
        assert_eq!(retry_delay(2, S(30), S(3600), 0.5), S(45));
    }

    proptest! {
        #[test]
        fn always_within_half_and_full_ceiling(attempt in 1u32..64, base in 1u64..600, r in 0.0f64..1.0) {
            let max = S(3600);
            let d = retry_delay(attempt, S(base), max, r);
            let ceiling = S(base).saturating_mul(1u32 << (attempt - 1).min(31)).min(max);
            prop_assert!(d >= ceiling / 2 && d <= ceiling);
        }
    }
}
