//! Flipper's gate evaluation, bit for bit (SPEC §4.1): a feature is enabled for an actor when any
//! gate is open.

use std::collections::BTreeSet;

/// Flipper multiplies percentages by this before comparing with the actor's bucket.
const SCALING_FACTOR: f64 = 1_000.0;
/// Buckets run from 0 to 99,999 (100 percent times the scaling factor).
const BUCKETS: u32 = 100_000;

/// The gate values of one feature, as stored in `flipper_gates`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Gates {
    /// `boolean` gate: on for everyone.
    pub boolean: bool,
    /// `actors` gate: flipper ids that are always on.
    pub actors: BTreeSet<String>,
    /// `percentage_of_actors` gate, 0–100 (may be fractional, e.g. 2.5).
    pub percentage_of_actors: f64,
    /// `percentage_of_time` gate, 0–100.
    pub percentage_of_time: f64,
}

impl Gates {
    /// Evaluates the gates for `actor` (a participant id) of feature `feature_key`.
    /// `random` is a uniform draw in [0, 1) used only by the percentage-of-time gate.
    pub fn is_open_for(&self, feature_key: &str, actor: Option<&str>, random: impl FnOnce() -> f64) -> bool {
        if self.boolean {
            return true;
        }
        if let Some(actor) = actor {
            if self.actors.contains(actor) {
                return true;
            }
            if self.percentage_of_actors > 0.0 && actor_in_percentage(feature_key, actor, self.percentage_of_actors) {
                return true;
            }
        }
        self.percentage_of_time > 0.0 && random() < self.percentage_of_time / 100.0
    }

    /// Flipper's feature state: `on` (boolean, or a 100% gate), `off` (no gate set) or `conditional`.
    pub fn state(&self) -> &'static str {
        if self.boolean || self.percentage_of_actors >= 100.0 || self.percentage_of_time >= 100.0 {
            "on"
        } else if self.actors.is_empty() && self.percentage_of_actors <= 0.0 && self.percentage_of_time <= 0.0 {
            "off"
        } else {
            "conditional"
        }
    }
}

/// Flipper's bucket for an actor: CRC-32 (zlib) of the feature key followed directly by the actor id.
pub fn actor_bucket(feature_key: &str, actor: &str) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(feature_key.as_bytes());
    hasher.update(actor.as_bytes());
    hasher.finalize() % BUCKETS
}

/// True when the actor falls inside `percentage` of actors; comparisons are in f64, unrounded, as Ruby does.
pub fn actor_in_percentage(feature_key: &str, actor: &str, percentage: f64) -> bool {
    f64::from(actor_bucket(feature_key, actor)) < percentage * SCALING_FACTOR
}

/// Parses a percentage as Flipper stores it (`"25"`, `"2.5"`); `None` for anything else or out of 0..=100.
pub fn parse_percentage(text: &str) -> Option<f64> {
    let value: f64 = text.trim().parse().ok()?;
    (value.is_finite() && (0.0..=100.0).contains(&value)).then_some(value)
}

/// Formats a percentage as Ruby prints it: `25`, `2.5` (no trailing `.0` for whole numbers).
pub fn format_percentage(value: f64) -> String {
    if value.fract() == 0.0 { format!("{}", value as i64) } else { format!("{value}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn spec_vectors() {
        assert_eq!(crc32fast::hash(b"searchUser;1"), 3_676_297_600);
        assert_eq!(actor_bucket("search", "User;1"), 97_600);
        assert!(!actor_in_percentage("search", "User;1", 25.0));
        assert_eq!(crc32fast::hash(b"searchUser;2"), 1_108_772_922);
        assert_eq!(actor_bucket("search", "User;2"), 72_922);
        assert!(!actor_in_percentage("search", "User;2", 25.0));
        assert_eq!(crc32fast::hash(b"new_featureuser@example.com"), 3_314_544_585);
        assert_eq!(actor_bucket("new_feature", "user@example.com"), 44_585);
        assert!(!actor_in_percentage("new_feature", "user@example.com", 2.0));
        assert!(actor_in_percentage("new_feature", "user@example.com", 50.0));
        assert_eq!(crc32fast::hash(b"my-featureuser-42"), 4_076_418_157);
        assert_eq!(actor_bucket("my-feature", "user-42"), 18_157);
        assert!(actor_in_percentage("my-feature", "user-42", 25.0));
        assert!(!actor_in_percentage("my-feature", "user-42", 18.157));
        assert!(actor_in_percentage("my-feature", "user-42", 18.158));
    }

    #[test]
    fn any_open_gate_enables() {
        let never = || 0.99;
        let mut g = Gates::default();
        assert!(!g.is_open_for("f", Some("1"), never));
        g.actors.insert("1".into());
        assert!(g.is_open_for("f", Some("1"), never));
        assert!(!g.is_open_for("f", Some("2"), never));
        assert!(!g.is_open_for("f", None, never));
        g.percentage_of_time = 50.0;
        assert!(g.is_open_for("f", None, || 0.49));
        assert!(!g.is_open_for("f", None, || 0.5));
        g.boolean = true;
        assert!(g.is_open_for("f", None, never));
    }

    #[test]
    fn percentages_parse_and_print_like_ruby() {
        assert_eq!(parse_percentage("25"), Some(25.0));
        assert_eq!(parse_percentage("2.5"), Some(2.5));
        assert_eq!(parse_percentage("101"), None);
        assert_eq!(parse_percentage("-1"), None);
        assert_eq!(parse_percentage("abc"), None);
        assert_eq!(format_percentage(25.0), "25");
        assert_eq!(format_percentage(2.5), "2.5");
    }

    #[test]
    fn state_names() {
        let mut g = Gates::default();
        assert_eq!(g.state(), "off");
        g.percentage_of_actors = 25.0;
        assert_eq!(g.state(), "conditional");
        g.percentage_of_actors = 100.0;
        assert_eq!(g.state(), "on");
    }

    proptest! {
        #[test]
        fn zero_percent_enables_nobody_and_hundred_everybody(actor in "[0-9]{1,12}") {
            prop_assert!(!actor_in_percentage("event_bus_gateway_emails_enabled", &actor, 0.0));
            prop_assert!(actor_in_percentage("event_bus_gateway_emails_enabled", &actor, 100.0));
        }

        #[test]
        fn raising_the_percentage_never_removes_an_actor(actor in "[0-9]{1,12}", a in 0.0f64..=100.0, b in 0.0f64..=100.0) {
            let (low, high) = if a <= b { (a, b) } else { (b, a) };
            if actor_in_percentage("feature", &actor, low) {
                prop_assert!(actor_in_percentage("feature", &actor, high));
            }
        }
    }

    #[test]
    fn enabled_share_tracks_the_setting() {
        for pct in [2.0, 25.0, 50.0, 75.0] {
            let on = (0..100_000u32)
                .filter(|i| {
                    actor_in_percentage("event_bus_gateway_emails_enabled", &(600_000_000 + i).to_string(), pct)
                })
                .count();
            let share = on as f64 / 1_000.0;
            assert!((share - pct).abs() <= 1.0, "{pct}% gave {share}%");
        }
    }
}
