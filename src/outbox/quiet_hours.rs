//! SMS quiet hours (CHANNELS.md §5): no SMS while the local time is inside a configured window. Pure:
//! the worker asks [`QuietHours::decide`] before every SMS call (first send, retry and resend alike) with
//! the instant it would send and the row id, and defers, blocks or sends as told.
//!
//! An instant is *inside* the window when its wall-clock time in the zone is in `[start, end)` (for a
//! window crossing midnight, `>= start` or `< end`). A deferred send goes to the first instant after the
//! due one at which the clock shows `end` (DST-correct: 09:00 EST or 09:00 EDT as the day has it; on a day
//! the clock skips `end`, the instant the clock jumps past it; on a day it shows `end` twice, the first),
//! plus a slot of `crc32(id) % spread` minutes. The slot hashes the row id's hyphenated lowercase text, as
//! vets-api hashes `identifier.to_s` (its Sidekiq job id) with `Zlib.crc32`; a row keeps its slot on every
//! try, and the ids spread the morning burst evenly.

use chrono::{DateTime, Days, NaiveDate, NaiveTime, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use uuid::Uuid;

use crate::config::{QuietHoursMode, SmsConfig};

/// `status_reason` of an SMS ended `suppressed` by quiet hours in `block` mode.
pub const REASON_QUIET_HOURS: &str = "sms_quiet_hours";

/// Daylight-saving shifts are at most this long in the zones we accept, so a spread this much shorter than
/// the open part of the day never reaches the next window.
const DST_SLACK_MINUTES: u32 = 60;
const MINUTES_PER_DAY: u32 = 24 * 60;

/// What to do with an SMS due at some instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuietDecision {
    /// Outside the window (or quiet hours off): send now.
    Send,
    /// Inside the window, `defer` mode: make the row due again at this instant (not a try used).
    DeferUntil(DateTime<Utc>),
    /// Inside the window, `block` mode: end the row `suppressed`, reason [`REASON_QUIET_HOURS`].
    Block,
}

/// A validated quiet-hours policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuietHours {
    mode: QuietHoursMode,
    start: NaiveTime,
    end: NaiveTime,
    zone: Tz,
    spread_minutes: u32,
}

impl QuietHours {
    /// A policy from parsed values; `Err` names what is wrong (the keys are `sms.quiet_hours_*`).
    pub fn new(
        mode: QuietHoursMode,
        start: NaiveTime,
        end: NaiveTime,
        zone: Tz,
        spread_minutes: u32,
    ) -> Result<Self, String> {
        if start == end {
            return Err("sms.quiet_hours_start and sms.quiet_hours_end: must differ (quiet_hours_mode = \"off\" \
                        turns quiet hours off)"
                .to_owned());
        }
        let open = open_minutes(start, end);
        let max = open.saturating_sub(DST_SLACK_MINUTES);
        if spread_minutes < 1 || spread_minutes > max {
            return Err(format!(
                "sms.quiet_hours_spread_minutes: must be from 1 to {max} (the {open} minutes from quiet_hours_end \
                 to quiet_hours_start, less {DST_SLACK_MINUTES} for daylight saving changes)"
            ));
        }
        Ok(Self { mode, start, end, zone, spread_minutes })
    }

    /// Parses and checks the `[sms]` quiet-hours keys; every problem at once, each naming its key.
    pub fn from_config(config: &SmsConfig) -> Result<Self, Vec<String>> {
        let start = parse_time("sms.quiet_hours_start", &config.quiet_hours_start);
        let end = parse_time("sms.quiet_hours_end", &config.quiet_hours_end);
        let zone = config.quiet_hours_zone.trim().parse::<Tz>().map_err(|_| {
            format!(
                "sms.quiet_hours_zone: `{}` is not an IANA time zone name (e.g. America/New_York)",
                config.quiet_hours_zone
            )
        });
        match (start, end, zone) {
            (Ok(start), Ok(end), Ok(zone)) => {
                Self::new(config.quiet_hours_mode, start, end, zone, config.quiet_hours_spread_minutes)
                    .map_err(|e| vec![e])
            }
            (start, end, zone) => Err([start.err(), end.err(), zone.err()].into_iter().flatten().collect()),
        }
    }

    /// The configured mode.
    pub fn mode(&self) -> QuietHoursMode {
        self.mode
    }

    /// Whether `at` falls inside the window (whatever the mode).
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        let time = at.with_timezone(&self.zone).time();
        if self.start < self.end {
            self.start <= time && time < self.end
        } else {
            time >= self.start || time < self.end
        }
    }

    /// What to do with the SMS of row `id` due at `due`. The same for first sends and resends.
    pub fn decide(&self, due: DateTime<Utc>, id: Uuid) -> QuietDecision {
        if self.mode == QuietHoursMode::Off || !self.contains(due) {
            return QuietDecision::Send;
        }
        match self.mode {
            QuietHoursMode::Block => QuietDecision::Block,
            _ => QuietDecision::DeferUntil(self.deferred(due, id)),
        }
    }

    /// The instant a send due at `due` (inside the window) is deferred to: the window's end plus the row's slot.
    fn deferred(&self, due: DateTime<Utc>, id: Uuid) -> DateTime<Utc> {
        let end = self.next_end(due);
        let at = end + TimeDelta::minutes(i64::from(slot_minutes(id, self.spread_minutes)));
        // Unreachable for the zones and spreads `new` accepts; kept so no deferral ever lands in a window.
        if self.contains(at) { end } else { at }
    }

    /// The first instant after `after` at which the local clock shows the window's end.
    fn next_end(&self, after: DateTime<Utc>) -> DateTime<Utc> {
        let today = after.with_timezone(&self.zone).date_naive();
        (0..=2)
            .filter_map(|days| today.checked_add_days(Days::new(days)))
            .map(|date| self.first_instant_at(date, self.end))
            .find(|at| *at > after)
            // A local date has one `end`; two days on there always is one after `after`.
            .unwrap_or(after + TimeDelta::days(1))
    }

    /// The first instant on `date` whose local time is `time`, or, if the clock skips it that day, the
    /// instant the clock jumps past it.
    fn first_instant_at(&self, date: NaiveDate, time: NaiveTime) -> DateTime<Utc> {
        let wall = date.and_time(time);
        (0..MINUTES_PER_DAY)
            .find_map(|minute| self.zone.from_local_datetime(&(wall + TimeDelta::minutes(minute.into()))).earliest())
            .map(|local| local.with_timezone(&Utc))
            // No zone skips a whole day of minutes from `time`; fall back to reading the wall time as UTC.
            .unwrap_or_else(|| Utc.from_utc_datetime(&wall))
    }
}

/// The row's minute offset after the window's end: `crc32(id as hyphenated lowercase text) % spread`.
pub fn slot_minutes(id: Uuid, spread_minutes: u32) -> u32 {
    crc32fast::hash(id.hyphenated().to_string().as_bytes()) % spread_minutes.max(1)
}

/// Minutes from `end` to the next `start`: the open part of the day, on the wall clock.
fn open_minutes(start: NaiveTime, end: NaiveTime) -> u32 {
    let minute_of_day = |t: NaiveTime| t.hour() * 60 + t.minute();
    (minute_of_day(start) + MINUTES_PER_DAY - minute_of_day(end)) % MINUTES_PER_DAY
}

/// `HH:MM`, 24-hour.
fn parse_time(key: &str, text: &str) -> Result<NaiveTime, String> {
    let text = text.trim();
    let valid = text.len() == 5 && text.as_bytes()[2] == b':';
    valid
        .then(|| NaiveTime::parse_from_str(text, "%H:%M").ok())
        .flatten()
        .ok_or_else(|| format!("{key}: `{text}` is not a time of day as HH:MM, 24-hour (e.g. 21:00)"))
}

#[cfg(test)]
mod tests {
    use chrono_tz::America::New_York;
    use proptest::prelude::*;

    use super::*;

    fn time(text: &str) -> NaiveTime {
        NaiveTime::parse_from_str(text, "%H:%M").unwrap()
    }

    fn policy(mode: QuietHoursMode, start: &str, end: &str, zone: Tz, spread: u32) -> QuietHours {
        QuietHours::new(mode, time(start), time(end), zone, spread).unwrap()
    }

    /// vets-api's window: 21:00-09:00 Eastern, deferred into 09:00-12:00.
    fn eastern() -> QuietHours {
        policy(QuietHoursMode::Defer, "21:00", "09:00", New_York, 180)
    }

    /// `y-m-d h:m` Eastern wall time (must exist and be unambiguous).
    fn et(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        New_York.with_ymd_and_hms(y, m, d, h, min, 0).single().unwrap().with_timezone(&Utc)
    }

    fn utc(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, min, 0).single().unwrap()
    }

    fn deferred(p: &QuietHours, due: DateTime<Utc>, id: Uuid) -> DateTime<Utc> {
        match p.decide(due, id) {
            QuietDecision::DeferUntil(at) => at,
            other => panic!("expected a deferral for {due}, got {other:?}"),
        }
    }

    fn slot(id: Uuid) -> TimeDelta {
        TimeDelta::minutes(slot_minutes(id, 180).into())
    }

    const ID: Uuid = Uuid::from_u128(0x3f2a_9c1e_5b7d_4e8f_a0b1_c2d3_e4f5_a6b7);

    #[test]
    fn a_request_at_half_past_ten_at_night_goes_out_next_morning_in_its_slot() {
        let p = eastern();
        let at = deferred(&p, et(2026, 6, 10, 22, 30), ID);
        assert!(at >= et(2026, 6, 11, 9, 0) && at < et(2026, 6, 11, 12, 0), "{at}");
        assert_eq!(at, et(2026, 6, 11, 9, 0) + slot(ID));
        assert!(!p.contains(at));
        // The row's slot is the same on every try, whenever in the night it is asked.
        assert_eq!(deferred(&p, et(2026, 6, 11, 3, 15), ID), at);
        assert_eq!(deferred(&p, et(2026, 6, 10, 21, 0), ID), at);
        assert_eq!(p.decide(at, ID), QuietDecision::Send, "at its slot it is sent");
    }

    #[test]
    fn the_slot_is_vets_apis_crc32_of_the_id_text() {
        // Python: zlib.crc32(b"3f2a9c1e-5b7d-4e8f-a0b1-c2d3e4f5a6b7") == 554886975, and % 180 == 75.
        assert_eq!(crc32fast::hash(b"3f2a9c1e-5b7d-4e8f-a0b1-c2d3e4f5a6b7"), 554_886_975);
        assert_eq!(slot_minutes(ID, 180), 75);
        let slots: std::collections::BTreeSet<u32> =
            (0..2_000u128).map(|n| slot_minutes(Uuid::from_u128(n * 0x9e37_79b9_7f4a_7c15), 180)).collect();
        assert!(slots.iter().all(|s| *s < 180));
        assert!(slots.len() > 170, "ids spread over the window: {} distinct slots", slots.len());
    }

    #[test]
    fn the_window_edges() {
        let p = eastern();
        assert_eq!(deferred(&p, et(2026, 6, 11, 8, 59), ID), et(2026, 6, 11, 9, 0) + slot(ID), "08:59 -> that morning");
        assert_eq!(p.decide(et(2026, 6, 11, 9, 0), ID), QuietDecision::Send, "09:00 is outside");
        assert_eq!(p.decide(et(2026, 6, 11, 20, 59), ID), QuietDecision::Send);
        assert!(p.contains(et(2026, 6, 11, 21, 0)), "21:00 is inside");
        assert!(p.contains(et(2026, 6, 11, 9, 0) - TimeDelta::nanoseconds(1)));
        assert_eq!(p.decide(et(2026, 6, 11, 12, 0), Uuid::new_v4()), QuietDecision::Send);
    }

    #[test]
    fn spring_forward_sends_at_nine_daylight_time() {
        // 2026-03-08: US clocks go from 02:00 EST to 03:00 EDT. 09:00 EDT = 13:00 UTC (14:00 the day before).
        let p = eastern();
        assert_eq!(deferred(&p, et(2026, 3, 7, 22, 30), ID), utc(2026, 3, 8, 13, 0) + slot(ID));
        assert_eq!(deferred(&p, utc(2026, 3, 8, 7, 30), ID), utc(2026, 3, 8, 13, 0) + slot(ID), "03:30 EDT");
        assert_eq!(deferred(&p, et(2026, 3, 6, 22, 30), ID), utc(2026, 3, 7, 14, 0) + slot(ID), "the day before: EST");
        assert_eq!(p.decide(utc(2026, 3, 8, 13, 0), ID), QuietDecision::Send);
        assert!(p.contains(utc(2026, 3, 8, 12, 59)), "08:59 EDT");
    }

    #[test]
    fn fall_back_sends_at_nine_standard_time() {
        // 2026-11-01: 02:00 EDT becomes 01:00 EST. 09:00 EST = 14:00 UTC.
        let p = eastern();
        assert_eq!(deferred(&p, et(2026, 10, 31, 22, 30), ID), utc(2026, 11, 1, 14, 0) + slot(ID));
        // 01:30 happens twice that night; both are deferred to the same morning.
        assert_eq!(deferred(&p, utc(2026, 11, 1, 5, 30), ID), utc(2026, 11, 1, 14, 0) + slot(ID), "01:30 EDT");
        assert_eq!(deferred(&p, utc(2026, 11, 1, 6, 30), ID), utc(2026, 11, 1, 14, 0) + slot(ID), "01:30 EST");
        assert!(p.contains(utc(2026, 11, 1, 13, 59)), "08:59 EST");
        assert_eq!(p.decide(utc(2026, 11, 1, 14, 0), ID), QuietDecision::Send);
    }

    #[test]
    fn a_window_that_does_not_cross_midnight() {
        let p = policy(QuietHoursMode::Defer, "01:00", "05:00", New_York, 120);
        assert_eq!(p.decide(et(2026, 6, 11, 0, 59), ID), QuietDecision::Send);
        assert_eq!(p.decide(et(2026, 6, 11, 23, 0), ID), QuietDecision::Send);
        assert_eq!(p.decide(et(2026, 6, 11, 5, 0), ID), QuietDecision::Send);
        let slot = TimeDelta::minutes(slot_minutes(ID, 120).into());
        assert_eq!(deferred(&p, et(2026, 6, 11, 1, 0), ID), et(2026, 6, 11, 5, 0) + slot);
        assert_eq!(deferred(&p, et(2026, 6, 11, 4, 59), ID), et(2026, 6, 11, 5, 0) + slot);
    }

    #[test]
    fn an_end_the_clock_skips_is_the_instant_it_jumps_past_it() {
        // 01:00-02:30 on 2026-03-08: 02:30 does not exist; the window ends when 01:59:59 EST becomes 03:00 EDT.
        let p = policy(QuietHoursMode::Defer, "01:00", "02:30", New_York, 60);
        let slot = TimeDelta::minutes(slot_minutes(ID, 60).into());
        assert_eq!(deferred(&p, utc(2026, 3, 8, 6, 30), ID), utc(2026, 3, 8, 7, 0) + slot, "01:30 EST -> 03:00 EDT");
    }

    #[test]
    fn block_and_off_modes() {
        let block = policy(QuietHoursMode::Block, "21:00", "09:00", New_York, 180);
        assert_eq!(block.decide(et(2026, 6, 10, 22, 30), ID), QuietDecision::Block);
        assert_eq!(block.decide(et(2026, 6, 10, 12, 0), ID), QuietDecision::Send);
        let off = policy(QuietHoursMode::Off, "21:00", "09:00", New_York, 180);
        assert_eq!(off.decide(et(2026, 6, 10, 22, 30), ID), QuietDecision::Send);
        assert!(off.contains(et(2026, 6, 10, 22, 30)), "the window still exists, it is just not enforced");
    }

    fn config(start: &str, end: &str, zone: &str, spread: u32) -> SmsConfig {
        SmsConfig {
            quiet_hours_mode: QuietHoursMode::Defer,
            quiet_hours_start: start.into(),
            quiet_hours_end: end.into(),
            quiet_hours_zone: zone.into(),
            quiet_hours_spread_minutes: spread,
            max_sends: 5,
            resend_delay_seconds: 3600,
        }
    }

    #[test]
    fn bad_settings_name_their_keys() {
        assert_eq!(QuietHours::from_config(&config("21:00", "09:00", "America/New_York", 180)), Ok(eastern()));
        let errors = QuietHours::from_config(&config("25:00", "9am", "Mars/Olympus", 180)).unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("sms.quiet_hours_start: `25:00` is not a time of day"), "{errors:?}");
        assert!(errors[1].starts_with("sms.quiet_hours_end: `9am`"), "{errors:?}");
        assert!(errors[2].starts_with("sms.quiet_hours_zone: `Mars/Olympus` is not an IANA"), "{errors:?}");
        for bad in ["9:00", "09:00:00", "0900", " ", "21:60"] {
            assert!(QuietHours::from_config(&config(bad, "09:00", "UTC", 180)).is_err(), "{bad:?} accepted");
        }
        let same = QuietHours::from_config(&config("09:00", "09:00", "UTC", 180)).unwrap_err();
        assert!(same[0].starts_with("sms.quiet_hours_start and sms.quiet_hours_end: must differ"), "{same:?}");
        let wide = QuietHours::from_config(&config("21:00", "09:00", "UTC", 661)).unwrap_err();
        assert!(wide[0].starts_with("sms.quiet_hours_spread_minutes: must be from 1 to 660"), "{wide:?}");
        assert!(QuietHours::from_config(&config("21:00", "09:00", "UTC", 660)).is_ok());
        assert!(QuietHours::from_config(&config("21:00", "09:00", "UTC", 0)).is_err());
        assert!(QuietHours::from_config(&config("03:00", "02:00", "UTC", 1)).is_err(), "open 60 minutes: no room");
    }

    #[test]
    fn startup_checks_the_section_naming_each_variable() {
        let load = |pairs: &[(&str, &str)]| {
            crate::config::Config::load_from(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        };
        let c = load(&[]).unwrap();
        assert_eq!(QuietHours::from_config(&c.sms), Ok(eastern()), "the defaults are vets-api's window");
        let err = load(&[
            ("EBG_SMS__QUIET_HOURS_MODE", "sometimes"),
            ("EBG_SMS__QUIET_HOURS_ZONE", "Eastern"),
            ("EBG_SMS__QUIET_HOURS_END", "9"),
        ])
        .unwrap_err()
        .to_string();
        for needle in [
            "EBG_SMS__QUIET_HOURS_MODE: expected one of `defer`, `block`, `off`",
            "sms.quiet_hours_zone: `Eastern` is not an IANA time zone name",
            "sms.quiet_hours_end: `9` is not a time of day",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in\n{err}");
        }
        let c =
            load(&[("EBG_SMS__QUIET_HOURS_MODE", "block"), ("EBG_SMS__QUIET_HOURS_ZONE", "Europe/London")]).unwrap();
        assert_eq!(QuietHours::from_config(&c.sms).unwrap().mode(), QuietHoursMode::Block);
    }

    /// Zones with DST in either hemisphere, a half-hour DST (Lord Howe), none (Honolulu, UTC).
    const ZONES: [Tz; 7] = [
        chrono_tz::America::New_York,
        chrono_tz::America::Los_Angeles,
        chrono_tz::Europe::London,
        chrono_tz::Australia::Sydney,
        chrono_tz::Australia::Lord_Howe,
        chrono_tz::Pacific::Honolulu,
        chrono_tz::UTC,
    ];

    /// A window (start and end minute of day) with room for a spread, and the spread.
    fn window() -> impl Strategy<Value = (NaiveTime, NaiveTime, u32)> {
        (0u32..MINUTES_PER_DAY, 1u32..MINUTES_PER_DAY)
            .prop_filter("room for a spread", |(_, len)| MINUTES_PER_DAY - len > DST_SLACK_MINUTES)
            .prop_flat_map(|(start, len)| {
                let end = (start + len) % MINUTES_PER_DAY;
                let max = MINUTES_PER_DAY - len - DST_SLACK_MINUTES;
                (Just(start), Just(end), 1..=max)
            })
            .prop_map(|(start, end, spread)| {
                let t = |m: u32| NaiveTime::from_hms_opt(m / 60, m % 60, 0).unwrap();
                (t(start), t(end), spread)
            })
    }

    proptest! {
        #[test]
        fn a_send_is_never_in_the_window_and_never_early(
            (start, end, spread) in window(),
            zone in prop::sample::select(ZONES.to_vec()),
            // 2024-01-01 .. 2029-01-01, to the second: every DST change of five years in reach.
            due_seconds in 1_704_067_200i64..1_861_920_000,
            id in any::<u128>(),
        ) {
            let p = QuietHours::new(QuietHoursMode::Defer, start, end, zone, spread).unwrap();
            let due = DateTime::from_timestamp(due_seconds, 0).unwrap();
            let id = Uuid::from_u128(id);
            let at = match p.decide(due, id) {
                QuietDecision::Send => {
                    prop_assert!(!p.contains(due));
                    due
                }
                QuietDecision::DeferUntil(at) => {
                    prop_assert!(p.contains(due));
                    prop_assert!(at > due, "{at} before {due}");
                    // At most a day and the spread later (a DST change adds at most an hour).
                    prop_assert!(at - due <= TimeDelta::minutes(i64::from(MINUTES_PER_DAY + spread + 60)));
                    at
                }
                QuietDecision::Block => unreachable!("defer mode never blocks"),
            };
            prop_assert!(!p.contains(at), "{at} is inside {start}-{end} {zone}");
            // Deciding again at the deferred instant sends: the worker never defers a row twice in a row.
            prop_assert_eq!(p.decide(at, id), QuietDecision::Send);
        }
    }
}
