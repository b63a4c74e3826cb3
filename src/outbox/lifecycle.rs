//! The notification lifecycle (SPEC §10), without a database: the states and the names stored in
//! `notifications.status`, their named groups, which transitions are allowed, what a callback does,
//! and how a row is queued again ([`Requeue`]). The statements in [`crate::outbox`] follow these
//! rules; the report's and the migrations' spelled-out status lists are pinned to the groups by tests.

use std::fmt;
use std::time::Duration;

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

/// What a callback does to its notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// The notification moves to this state.
    Move(Status),
    /// A Retryable temporary failure with sends left: queue a resend.
    Resend,
    /// A Retryable temporary failure of the last allowed send: `dead`.
    Dead,
    /// Kept as an event only (in-flight status, earlier send, or the state is already final).
    Record,
    /// The row's latest send is not recorded yet: answer 503 so VA Notify retries.
    NotYet,
}

impl Effect {
    /// Stored in `notification_events.effect`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Move(_) => "moved",
            Self::Resend => "resend",
            Self::Dead => "dead",
            Self::Record | Self::NotYet => "recorded",
        }
    }
}

/// A notification as a callback finds it.
#[derive(Clone, Copy, Debug)]
pub struct RowState {
    pub status: Status,
    /// Sends VA Notify accepted so far.
    pub sends: i32,
    /// Whether the callback's `id` is the row's latest `va_notify_id` (or either is unknown).
    pub latest_send: bool,
}

/// Decides what a callback with `status`/`reason` does to `row` (rules in the [`crate::callbacks`] module docs).
pub fn decide(row: RowState, status: &str, reason: Option<&str>, max_sends: u32) -> Effect {
    let reported = match status {
        "delivered" => Status::Delivered,
        "permanent-failure" => Status::PermanentFailure,
        "temporary-failure" => Status::TemporaryFailure,
        _ => return Effect::Record,
    };
    match row.status {
        // During a resend the row still holds the previous send's id: a callback naming it is late news.
        Status::Sending if row.sends > 0 && row.latest_send => Effect::Record,
        Status::Sending => Effect::NotYet,
        _ if !row.latest_send => Effect::Record,
        Status::Sent => match reported {
            Status::TemporaryFailure if reason.is_some_and(|r| r.starts_with("Retryable")) => {
                if row.sends < max_sends as i32 { Effect::Resend } else { Effect::Dead }
            }
            other => Effect::Move(other),
        },
        // A resend is waiting: only proof of delivery cancels it.
        Status::Queued | Status::RetryWait if row.sends > 0 && reported == Status::Delivered => {
            Effect::Move(Status::Delivered)
        }
        Status::TemporaryFailure | Status::PermanentFailure | Status::Failed | Status::Dead
            if reported == Status::Delivered =>
        {
            Effect::Move(Status::Delivered)
        }
        _ => Effect::Record,
    }
}

/// The states the worker still acts on: the partial index `notifications_due_by_channel` covers exactly these.
/// In the order the queue gauges and the console show them.
pub const PENDING: [Status; 3] = [Status::Queued, Status::RetryWait, Status::Sending];

/// The states that ended in an error (the report's `failed`).
pub const ERRORED: [Status; 4] = [Status::TemporaryFailure, Status::PermanentFailure, Status::Failed, Status::Dead];

/// The states the worker is done with: only a callback, a replay or a release changes them. Exactly
/// the states outside [`PENDING`], so retention may delete them.
pub const FINAL: [Status; 9] = [
    Status::Sent,
    Status::Delivered,
    Status::TemporaryFailure,
    Status::PermanentFailure,
    Status::Failed,
    Status::Dead,
    Status::Skipped,
    Status::Suppressed,
    Status::Duplicate,
];

/// The stored names of a group, for binding as a `text[]` (`status = any($n)`).
pub fn names(group: &[Status]) -> Vec<&'static str> {
    group.iter().map(|s| s.as_str()).collect()
}

/// A group as an SQL list literal, `('queued', ...)`. For statements that must use the partial index
/// `notifications_due_by_channel`: the planner proves its predicate from literals, never from a bound array
/// (a generic plan would then scan the table).
pub fn sql_list(group: &[Status]) -> String {
    let quoted: Vec<String> = group.iter().map(|s| format!("'{}'", s.as_str())).collect();
    format!("({})", quoted.join(", "))
}

impl Status {
    /// True for the states in [`PENDING`].
    pub fn is_pending(self) -> bool {
        PENDING.contains(&self)
    }
}

/// Whether a row may move from `from` to `to`. Every writer in [`crate::outbox`] only makes these
/// moves; the property test below drives random sequences through [`step`] to check they compose.
pub fn allowed(from: Status, to: Status) -> bool {
    use Status::*;
    match (from, to) {
        // A claim; an expired or orphaned lease is claimed again.
        (Queued | RetryWait | Sending, Sending) => true,
        // The outcome of a try (a deferral gives the row back as queued or retry_wait).
        (Sending, Sent | RetryWait | Queued | Failed | Dead | Skipped) => true,
        // Callbacks: the latest send's outcome, a resend, or proof of delivery overriding a failure.
        (Sent, Delivered | PermanentFailure | TemporaryFailure | Dead | Queued) => true,
        (Queued | RetryWait | TemporaryFailure | PermanentFailure | Failed | Dead, Delivered) => true,
        // Replay and release.
        (Failed | Dead | Suppressed, Queued) => true,
        _ => false,
    }
}

/// The states in which a try's outcome may be written (the worker's finish statement refuses others):
/// only a row a worker leased. Each outcome's move from here is [`allowed`] (a test checks).
pub const OUTCOME_FROM: [Status; 1] = [Status::Sending];

/// The states a row may move to `to` from, by [`allowed`]: what the statements that move a row to
/// a fixed state bind as their `status = any(...)` guard, so a disallowed move changes nothing.
pub fn sources(to: Status) -> Vec<Status> {
    Status::ALL.into_iter().filter(|from| allowed(*from, to)).collect()
}

/// How many VA Notify calls a requeued row may make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    /// The budget of the current send goes on (nothing was tried yet, e.g. a release).
    Keep,
    /// A new send with a full budget (`attempts_before_send = attempts`): a resend or a replay after
    /// the cause was fixed. `attempts` itself keeps growing, so attempt records never collide.
    Fresh,
}

/// When a requeued row becomes due, counted from the database's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    Now,
    After(Duration),
}

impl Due {
    /// Seconds from now, as the requeue statement binds them.
    pub fn seconds(self) -> f64 {
        match self {
            Self::Now => 0.0,
            Self::After(d) => d.as_secs_f64(),
        }
    }
}

/// Why a row is queued again, which states it may come from, and with which budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requeue {
    /// Stored in `status_reason`.
    pub reason: Option<String>,
    pub at: Due,
    pub budget: Budget,
    /// The states a row must be in to be requeued; any other row is left alone.
    pub from: Vec<Status>,
}

impl Requeue {
    /// A suppressed notification released after its toggle was turned on.
    pub fn release() -> Self {
        Self { reason: Some("released".into()), at: Due::Now, budget: Budget::Keep, from: vec![Status::Suppressed] }
    }

    /// A `failed` or `dead` notification queued again by an operator (`from` narrows it to one).
    pub fn replay(from: Status) -> Self {
        let from = [Status::Failed, Status::Dead].into_iter().filter(|s| *s == from).collect();
        Self { reason: Some("replayed".into()), at: Due::Now, budget: Budget::Fresh, from }
    }

    /// A sent notification VA Notify reported as a retryable temporary failure: sent again after `delay`.
    pub fn resend(reason: Option<String>, delay: Duration) -> Self {
        Self { reason, at: Due::After(delay), budget: Budget::Fresh, from: vec![Status::Sent] }
    }

    /// The stored names of [`Requeue::from`], less any state the lifecycle does not let requeue:
    /// the requeue statement's guard.
    pub fn from_names(&self) -> Vec<&'static str> {
        self.from.iter().filter(|s| allowed(**s, Status::Queued)).map(|s| s.as_str()).collect()
    }
}

/// The counters of a row that the lifecycle rules read, for the pure model in [`step`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    pub status: Status,
    /// VA Notify calls made (`attempts`).
    pub attempts: i32,
    /// Calls made before the current send began (`attempts_before_send`).
    pub attempts_before_send: i32,
    /// Sends VA Notify accepted (`sends`).
    pub sends: i32,
}

impl Counters {
    /// A freshly accepted row.
    pub fn accepted(enabled: bool) -> Self {
        let status = if enabled { Status::Queued } else { Status::Suppressed };
        Self { status, attempts: 0, attempts_before_send: 0, sends: 0 }
    }

    /// Calls made within the current send (what `worker.max_attempts` limits).
    pub fn tries_in_send(&self) -> i32 {
        self.attempts - self.attempts_before_send
    }
}

/// Something that happens to a row, as the outbox's statements apply it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A worker leases it and begins a try.
    Claim,
    /// VA Notify accepted the call.
    Sent,
    /// A retryable failure with tries left (the worker decides `dead` when none are).
    Retry,
    /// A terminal outcome of a try (`failed`, `dead`, `skipped`); `counts` is false for a skip.
    Finish(Status),
    /// No call was made; the try is given back.
    Defer,
    /// A callback reporting `status` (VA Notify's name) with `reason`.
    Callback { status: String, reason: Option<String>, latest_send: bool },
    /// A replay or release.
    Requeue(Requeue),
}

/// Why [`step`] refused an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{event} is not allowed in state {from}")]
pub struct Refused {
    pub from: Status,
    pub event: &'static str,
}

/// The effect of `event` on `row`, following the same rules as the statements (`max_sends` is
/// `callbacks.max_sends`). Pure, so random sequences of events can be checked without a database.
pub fn step(row: Counters, event: &Event, max_sends: u32) -> Result<Counters, Refused> {
    let refuse = |event| Err(Refused { from: row.status, event });
    let moved = |to: Status, next: Counters| {
        if allowed(row.status, to) { Ok(Counters { status: to, ..next }) } else { refuse("move") }
    };
    match event {
        Event::Claim if row.status.is_pending() => {
            moved(Status::Sending, Counters { attempts: row.attempts + 1, ..row })
        }
        Event::Claim => refuse("claim"),
        _ if matches!(event, Event::Sent | Event::Retry | Event::Finish(_) | Event::Defer)
            && row.status != Status::Sending =>
        {
            refuse("outcome")
        }
        Event::Sent => moved(Status::Sent, Counters { sends: row.sends + 1, ..row }),
        Event::Retry => moved(Status::RetryWait, row),
        Event::Finish(status) if matches!(status, Status::Failed | Status::Dead | Status::Skipped) => {
            let attempts = if *status == Status::Skipped { row.attempts - 1 } else { row.attempts };
            moved(*status, Counters { attempts, ..row })
        }
        Event::Finish(_) => refuse("finish"),
        Event::Defer => {
            let back = if row.attempts > 1 { Status::RetryWait } else { Status::Queued };
            moved(back, Counters { attempts: row.attempts - 1, ..row })
        }
        Event::Callback { status, reason, latest_send } => {
            let state = RowState { status: row.status, sends: row.sends, latest_send: *latest_send };
            match decide(state, status, reason.as_deref(), max_sends) {
                Effect::Move(to) => moved(to, row),
                Effect::Resend => requeue(row, &Requeue::resend(reason.clone(), Duration::ZERO)),
                Effect::Dead => moved(Status::Dead, row),
                Effect::Record | Effect::NotYet => Ok(row),
            }
        }
        Event::Requeue(r) => requeue(row, r),
    }
}

/// The effect of a requeue on `row`: refused unless the row is in one of `r.from`.
fn requeue(row: Counters, r: &Requeue) -> Result<Counters, Refused> {
    if !r.from.contains(&row.status) || !allowed(row.status, Status::Queued) {
        return Err(Refused { from: row.status, event: "requeue" });
    }
    let attempts_before_send = match r.budget {
        Budget::Keep => row.attempts_before_send,
        Budget::Fresh => row.attempts,
    };
    Ok(Counters { status: Status::Queued, attempts_before_send, ..row })
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

    #[test]
    fn pending_and_final_partition_the_states() {
        for s in Status::ALL {
            assert_ne!(PENDING.contains(&s), FINAL.contains(&s), "{s} must be in exactly one of PENDING and FINAL");
        }
        assert!(ERRORED.iter().all(|s| FINAL.contains(s)));
        assert_eq!(names(&PENDING), ["queued", "retry_wait", "sending"]);
        assert_eq!(sql_list(&PENDING), "('queued', 'retry_wait', 'sending')");
    }

    #[test]
    fn finished_rows_are_never_claimed_and_pending_rows_never_requeued() {
        for from in FINAL {
            assert!(!allowed(from, Status::Sending), "{from} -> sending");
        }
        for from in PENDING {
            assert!(!allowed(from, Status::Queued) || from == Status::Sending, "{from} -> queued");
        }
        assert!(!allowed(Status::Delivered, Status::Queued));
        assert!(!allowed(Status::Delivered, Status::PermanentFailure));
    }

    #[test]
    fn guards_follow_the_allowed_moves() {
        for to in [Status::Sent, Status::RetryWait, Status::Queued, Status::Failed, Status::Dead, Status::Skipped] {
            assert!(OUTCOME_FROM.iter().all(|from| allowed(*from, to)), "an outcome {to}");
        }
        assert!(!sources(Status::PermanentFailure).contains(&Status::Delivered));
        assert!(sources(Status::Delivered).contains(&Status::Dead));
        assert_eq!(sources(Status::Sending), [Status::Queued, Status::Sending, Status::RetryWait]);
        let mut bogus = Requeue::release();
        bogus.from.push(Status::Delivered);
        assert_eq!(bogus.from_names(), ["suppressed"], "requeue never takes a delivered row");
    }

    #[test]
    fn requeues_take_only_their_own_states() {
        assert_eq!(Requeue::replay(Status::Dead).from, [Status::Dead]);
        assert!(Requeue::replay(Status::Delivered).from.is_empty());
        let sent = Counters { status: Status::Sent, attempts: 3, attempts_before_send: 0, sends: 1 };
        let resent = step(sent, &Event::Requeue(Requeue::resend(None, Duration::ZERO)), 2).unwrap();
        assert_eq!((resent.status, resent.tries_in_send(), resent.attempts), (Status::Queued, 0, 3));
        let released = Counters::accepted(false);
        assert_eq!(step(released, &Event::Requeue(Requeue::release()), 2).unwrap().status, Status::Queued);
        assert!(step(released, &Event::Requeue(Requeue::replay(Status::Failed)), 2).is_err());
        assert!(step(Counters::accepted(true), &Event::Requeue(Requeue::release()), 2).is_err());
    }

    /// The quoted names in the first `(...)` after `marker` in `text`.
    fn quoted_after(text: &str, marker: &str) -> std::collections::BTreeSet<String> {
        let rest = &text[text.find(marker).unwrap_or_else(|| panic!("{marker} not found")) + marker.len()..];
        let list = &rest[rest.find('(').unwrap() + 1..rest.find(')').unwrap()];
        list.split(',').map(|n| n.trim().trim_matches('\'').to_owned()).collect()
    }

    #[test]
    fn the_migrations_spell_the_same_states_and_groups() {
        let init = include_str!("../../migrations/20261124000001_init.sql");
        let all: std::collections::BTreeSet<String> = names(&Status::ALL).into_iter().map(str::to_owned).collect();
        assert_eq!(quoted_after(init, "notifications_status_check check (status in"), all);
        // The due index as it is now (the one `claim.sql` and the gauges are written for).
        let due = include_str!("../../migrations/20261201000060_due_by_channel.sql");
        let index = &due[due.find("notifications_due_by_channel on").expect("the due index")..];
        let index = &index[..index.find(';').unwrap()];
        let pending: std::collections::BTreeSet<String> = names(&PENDING).into_iter().map(str::to_owned).collect();
        assert_eq!(quoted_after(index, "where status in"), pending);
        // The claim and the queue gauges must match the index predicate literally to use it.
        assert!(index.contains(&format!("where status in {}", sql_list(&PENDING))));
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        fn event() -> impl Strategy<Value = Event> {
            let callback_status = prop_oneof![
                Just("delivered"),
                Just("permanent-failure"),
                Just("temporary-failure"),
                Just("sending"),
                Just("created"),
            ];
            let reason =
                prop_oneof![Just(None), Just(Some("Retryable - later".to_owned())), Just(Some("No".to_owned()))];
            prop_oneof![
                Just(Event::Claim),
                Just(Event::Sent),
                Just(Event::Retry),
                Just(Event::Defer),
                prop::sample::select(vec![Status::Failed, Status::Dead, Status::Skipped, Status::Delivered])
                    .prop_map(Event::Finish),
                (callback_status, reason, any::<bool>()).prop_map(|(status, reason, latest_send)| Event::Callback {
                    status: status.into(),
                    reason,
                    latest_send
                }),
                prop::sample::select(vec![Status::Failed, Status::Dead])
                    .prop_map(|s| Event::Requeue(Requeue::replay(s))),
                Just(Event::Requeue(Requeue::release())),
            ]
        }

        proptest! {
            #[test]
            fn random_sequences_stay_defined_and_keep_the_budget(
                enabled in any::<bool>(),
                events in prop::collection::vec(event(), 0..60),
                max_sends in 1u32..4,
            ) {
                let mut row = Counters::accepted(enabled);
                for event in &events {
                    let Ok(next) = step(row, event, max_sends) else {
                        // Refused: the row is left as it was.
                        continue;
                    };
                    prop_assert!(Status::ALL.contains(&next.status));
                    prop_assert!(next == row || allowed(row.status, next.status), "{:?} -> {:?}", row, next);
                    // The budget: tries in the current send never go negative, only a claim uses one,
                    // and every requeue to a new send starts with the full budget.
                    prop_assert!(next.tries_in_send() >= 0, "{:?} after {:?}", next, event);
                    prop_assert!(next.attempts_before_send >= row.attempts_before_send);
                    if !matches!(event, Event::Claim) {
                        prop_assert!(next.tries_in_send() <= row.tries_in_send(), "{:?} used a try", event);
                    }
                    if let Event::Requeue(r) = event && r.budget == Budget::Fresh {
                        prop_assert_eq!(next.tries_in_send(), 0);
                    }
                    prop_assert!(next.sends >= row.sends);
                    row = next;
                }
            }
        }
    }
}
