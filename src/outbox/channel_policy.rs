//! Per-channel delivery policy that is not quiet hours (CHANNELS.md §5, §7): which channels are in dry
//! run, and how often and how far apart a Retryable temporary failure is resent. Pure; the worker and the
//! callback path ask it with the row's channel.

use std::time::Duration;

use crate::config::{CallbacksConfig, DryRunConfig, SmsConfig};
use crate::notify::Channel;

/// `status_reason` of a notification ended `skipped` because its channel is in dry run.
pub const REASON_DRY_RUN: &str = "dry_run";

/// How many sends one notification may have and how long to wait before a resend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResendPolicy {
    /// First send plus resends; the `max_sends` that [`crate::outbox::lifecycle::decide`] takes.
    pub max_sends: u32,
    /// Delay before a resend (the `delay` of [`crate::outbox::Requeue::resend`]).
    pub delay: Duration,
}

impl ResendPolicy {
    /// One send, never resent: push has no callbacks, so nothing ever asks for a resend.
    pub const NONE: Self = Self { max_sends: 1, delay: Duration::ZERO };
}

/// The dry-run switches and resend policies of every channel, from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelPolicy {
    dry_run: [bool; 3],
    email: ResendPolicy,
    sms: ResendPolicy,
}

impl ChannelPolicy {
    /// Email's resends from `[callbacks]` (SPEC §7's names), SMS's from `[sms]`, dry runs from `[dry_run]`.
    pub fn new(callbacks: &CallbacksConfig, sms: &SmsConfig, dry_run: &DryRunConfig) -> Self {
        Self {
            dry_run: [dry_run.email, dry_run.sms, dry_run.push],
            email: ResendPolicy { max_sends: callbacks.max_sends, delay: callbacks.resend_delay() },
            sms: ResendPolicy { max_sends: sms.max_sends, delay: sms.resend_delay() },
        }
    }

    /// Whether `channel` is in dry run: its notifications are resolved, then end `skipped`, reason
    /// [`REASON_DRY_RUN`], and VA Notify is never called.
    pub fn dry_run(&self, channel: Channel) -> bool {
        self.dry_run[index(channel)]
    }

    /// The resend policy of `channel`. Push gets [`ResendPolicy::NONE`].
    pub fn resend_policy(&self, channel: Channel) -> ResendPolicy {
        match channel {
            Channel::Email => self.email,
            Channel::Sms => self.sms,
            Channel::Push => ResendPolicy::NONE,
        }
    }
}

fn index(channel: Channel) -> usize {
    match channel {
        Channel::Email => 0,
        Channel::Sms => 1,
        Channel::Push => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::outbox::lifecycle::{Effect, RowState, Status, decide};

    fn policy(env: &[(&str, &str)]) -> ChannelPolicy {
        let c = Config::load_from(env.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap();
        ChannelPolicy::new(&c.callbacks, &c.sms, &c.dry_run)
    }

    #[test]
    fn defaults_send_everything_and_resend_email_and_sms_five_times_an_hour_apart() {
        let p = policy(&[]);
        for channel in [Channel::Email, Channel::Sms, Channel::Push] {
            assert!(!p.dry_run(channel), "{channel:?}");
        }
        let hourly = ResendPolicy { max_sends: 5, delay: Duration::from_secs(3600) };
        assert_eq!(p.resend_policy(Channel::Email), hourly);
        assert_eq!(p.resend_policy(Channel::Sms), hourly);
        assert_eq!(p.resend_policy(Channel::Push), ResendPolicy::NONE);
    }

    #[test]
    fn each_channel_is_configured_on_its_own() {
        let p = policy(&[
            ("EBG_DRY_RUN__SMS", "true"),
            ("EBG_SMS__MAX_SENDS", "2"),
            ("EBG_SMS__RESEND_DELAY_SECONDS", "600"),
            ("EBG_CALLBACKS__MAX_SENDS", "4"),
        ]);
        assert!(p.dry_run(Channel::Sms));
        assert!(!p.dry_run(Channel::Email) && !p.dry_run(Channel::Push));
        assert_eq!(p.resend_policy(Channel::Sms), ResendPolicy { max_sends: 2, delay: Duration::from_secs(600) });
        assert_eq!(p.resend_policy(Channel::Email).max_sends, 4);
        assert_eq!(p.resend_policy(Channel::Email).delay, Duration::from_secs(3600));
    }

    #[test]
    fn the_callback_decision_takes_the_channels_budget() {
        let p = policy(&[("EBG_SMS__MAX_SENDS", "2")]);
        let row = |sends| RowState { status: Status::Sent, sends, latest_send: true };
        let retryable = |channel, sends| {
            decide(row(sends), "temporary-failure", Some("Retryable - carrier"), p.resend_policy(channel).max_sends)
        };
        assert_eq!(retryable(Channel::Sms, 1), Effect::Resend);
        assert_eq!(retryable(Channel::Sms, 2), Effect::Dead);
        assert_eq!(retryable(Channel::Email, 2), Effect::Resend);
        assert_eq!(retryable(Channel::Push, 1), Effect::Dead, "push is never resent");
    }

    #[test]
    fn a_dry_run_is_named_at_startup_and_bad_values_name_their_keys() {
        let (_, warnings) = Config::load_with_warnings([("EBG_DRY_RUN__PUSH".to_owned(), "true".to_owned())]).unwrap();
        assert!(warnings.iter().any(|w| w.starts_with("dry_run.push is on")), "{warnings:?}");
        let err = Config::load_from([
            ("EBG_DRY_RUN__EMAIL".to_owned(), "perhaps".to_owned()),
            ("EBG_SMS__MAX_SENDS".to_owned(), "0".to_owned()),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("EBG_DRY_RUN__EMAIL: expected true or false"), "{err}");
        assert!(err.contains("sms.max_sends: must be at least 1"), "{err}");
    }
}
