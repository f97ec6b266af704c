//! When a job is due: pure functions of a schedule and a time (epoch ms), no clock read here,
//! so every rule is tested with any "now".
//!
//! Kinds, as OpenClaw's jobs store them:
//! - `every {everyMs, anchorMs?}`: the slots `anchor + k × every`; the anchor defaults to the
//!   job's creation time.
//! - `cron {expr, tz?}`: a 5-field (`min hour dom month dow`) or 6-field (seconds first)
//!   expression, as croner (OpenClaw's parser) reads it: lists, ranges, steps, month and day
//!   names, Sunday as 0 or 7, `?` for `*`, the `@hourly`… nicknames, and Vixie cron's rule that
//!   when both day fields are restricted a day matching *either* is due (`+` before the
//!   weekday field asks for both). Evaluated in the IANA zone `tz` (jiff's bundled database),
//!   UTC without one.
//! - `at {at}`: once, at an ISO 8601 instant (or epoch ms).
//!
//! Daylight saving, for cron: the expression names wall-clock slots, and each slot fires at
//! most once. A slot that does not exist (the hour skipped in spring) fires at the same
//! distance past the change (02:30 → 03:30), so a daily job never loses its day; a slot that
//! exists twice (the hour repeated in autumn) fires at its first occurrence only, so it never
//! runs twice. [`Schedule::next_after`] takes the last slot that ran (not the clock), which is
//! what makes clock steps harmless: a step back does not make a slot that ran due again, and
//! a step forward makes the missed slots due at once, handled as catch-up by the caller.

use jiff::Timestamp;
use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;

/// The shortest `every`.
pub const MIN_EVERY_MS: u64 = 1_000;
/// The longest `every` (ten years).
pub const MAX_EVERY_MS: u64 = 10 * 366 * 86_400_000;
/// How far ahead a cron expression is searched for its next slot (an expression that never
/// fires, such as `0 0 30 2 *`, is refused when a job is added).
const SEARCH_DAYS: i64 = 8 * 366;

/// A parsed, checked schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    Every { every_ms: u64, anchor_ms: i64 },
    Cron(Box<CronSchedule>),
    At { at_ms: i64 },
}

#[derive(Debug, Clone)]
pub struct CronSchedule {
    pub expr: CronExpr,
    pub tz: TimeZone,
}

impl Schedule {
    /// The first due time strictly after `after_ms`, or `None` if there is none (a one-shot
    /// whose time has passed, a cron expression with no slot in the next eight years).
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        match self {
            Schedule::Every {
                every_ms,
                anchor_ms,
            } => {
                let every = *every_ms as i64;
                if after_ms < *anchor_ms {
                    return Some(*anchor_ms);
                }
                let k = (after_ms - anchor_ms) / every + 1;
                anchor_ms.checked_add(k.checked_mul(every)?)
            }
            Schedule::At { at_ms } => (*at_ms > after_ms).then_some(*at_ms),
            Schedule::Cron(c) => c.next_after(after_ms),
        }
    }

    /// The slots in `(after_ms, until_ms]`, counted up to `cap` (for catch-up decisions:
    /// "how many were missed" needs no more than a few).
    pub fn count_between(&self, after_ms: i64, until_ms: i64, cap: usize) -> usize {
        let mut n = 0;
        let mut t = after_ms;
        while n < cap {
            match self.next_after(t) {
                Some(x) if x <= until_ms => {
                    n += 1;
                    t = x;
                }
                _ => break,
            }
        }
        n
    }

    /// The latest slot in `(after_ms, until_ms]`: the one a catch-up stands for.
    pub fn last_between(&self, after_ms: i64, until_ms: i64) -> Option<i64> {
        match self {
            Schedule::Every {
                every_ms,
                anchor_ms,
            } => {
                if until_ms < *anchor_ms {
                    return None;
                }
                let every = *every_ms as i64;
                let last = anchor_ms + (until_ms - anchor_ms) / every * every;
                (last > after_ms).then_some(last)
            }
            Schedule::At { at_ms } => (*at_ms > after_ms && *at_ms <= until_ms).then_some(*at_ms),
            Schedule::Cron(_) => {
                // Walk forward; bounded, since the caller only asks across a downtime and the
                // walk stops at 10,000 slots (then the newest found is close enough).
                let mut t = after_ms;
                let mut last = None;
                for _ in 0..10_000 {
                    match self.next_after(t) {
                        Some(x) if x <= until_ms => {
                            last = Some(x);
                            t = x;
                        }
                        _ => break,
                    }
                }
                last
            }
        }
    }

    /// The period used to judge lateness: `every`, or the gap between a cron expression's next
    /// two slots; `None` for a one-shot.
    pub fn period_ms(&self, from_ms: i64) -> Option<u64> {
        match self {
            Schedule::Every { every_ms, .. } => Some(*every_ms),
            Schedule::At { .. } => None,
            Schedule::Cron(_) => {
                let a = self.next_after(from_ms)?;
                let b = self.next_after(a)?;
                Some((b - a).max(0) as u64)
            }
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Schedule::Every { .. } => "every",
            Schedule::Cron(_) => "cron",
            Schedule::At { .. } => "at",
        }
    }
}

/// What to do about a job now, given the last slot decided (run or skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing is due; the next slot, if any.
    Wait(Option<i64>),
    /// Run once for `slot`, the latest due; `missed` slots passed since the last one (1: just
    /// this one; more: a catch-up that stands for all of them).
    Run { slot: i64, missed: usize },
    /// Record the missed slots as skipped, up to `slot` (`cron.skipMissedJobs` at boot).
    Skip { slot: i64, missed: usize },
}

/// The scheduler's decision for one job: at most one run for every slot that passed since
/// `last_slot`, however many; at boot, under `skip_missed`, a recurring job's missed slots
/// are skipped instead (a one-shot still runs).
pub fn decide(
    s: &Schedule,
    last_slot: i64,
    now: i64,
    at_boot: bool,
    skip_missed: bool,
) -> Decision {
    match s.last_between(last_slot, now) {
        None => Decision::Wait(s.next_after(last_slot)),
        Some(slot) => {
            let missed = s.count_between(last_slot, now, 10_000);
            if at_boot && skip_missed && !matches!(s, Schedule::At { .. }) {
                Decision::Skip { slot, missed }
            } else {
                Decision::Run { slot, missed }
            }
        }
    }
}

impl CronSchedule {
    pub fn parse(expr: &str, tz: Option<&str>) -> Result<CronSchedule, String> {
        let tz = match tz.map(str::trim).filter(|s| !s.is_empty()) {
            None => TimeZone::UTC,
            Some(name) => {
                TimeZone::get(name).map_err(|_| format!("unknown IANA time zone: {name:?}"))?
            }
        };
        Ok(CronSchedule {
            expr: CronExpr::parse(expr)?,
            tz,
        })
    }

    fn next_after(&self, after_ms: i64) -> Option<i64> {
        let e = &self.expr;
        let after = Timestamp::from_millisecond(after_ms).ok()?;
        // The first civil second to look at: the next whole second after `after`, on the
        // wall clock of the zone.
        let start = after
            .checked_add(jiff::SignedDuration::from_millis(
                1000 - after_ms.rem_euclid(1000),
            ))
            .ok()?
            .to_zoned(self.tz.clone())
            .datetime();
        let mut date = start.date();
        let mut first_day = true;
        for _ in 0..SEARCH_DAYS {
            if e.month[date.month() as usize] && e.day_matches(date) {
                let (h0, m0, s0) = if first_day {
                    (start.hour(), start.minute(), start.second())
                } else {
                    (0, 0, 0)
                };
                for h in h0..24 {
                    if !e.hour[h as usize] {
                        continue;
                    }
                    let lm = if h == h0 { m0 } else { 0 };
                    for m in lm..60 {
                        if !e.minute[m as usize] {
                            continue;
                        }
                        let ls = if h == h0 && m == m0 { s0 } else { 0 };
                        for s in ls..60 {
                            if !e.second[s as usize] {
                                continue;
                            }
                            let dt =
                                DateTime::new(date.year(), date.month(), date.day(), h, m, s, 0)
                                    .ok()?;
                            // Gaps resolve forward, folds to the earlier instant.
                            let at = self.tz.to_ambiguous_zoned(dt).compatible().ok()?;
                            let ms = at.timestamp().as_millisecond();
                            if ms > after_ms {
                                return Some(ms);
                            }
                        }
                    }
                }
            }
            first_day = false;
            date = date.tomorrow().ok()?;
        }
        None
    }
}

/// A cron expression as sets of allowed values.
#[derive(Debug, Clone)]
pub struct CronExpr {
    pub source: String,
    second: [bool; 60],
    minute: [bool; 60],
    hour: [bool; 24],
    /// Index 1..=31.
    dom: [bool; 32],
    /// Index 1..=12.
    month: [bool; 13],
    /// Index 0..=6, Sunday 0.
    dow: [bool; 7],
    dom_star: bool,
    dow_star: bool,
    /// `+` before the weekday field: both day fields must match.
    and_days: bool,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

impl CronExpr {
    pub fn parse(src: &str) -> Result<CronExpr, String> {
        let trimmed = src.trim();
        if trimmed.len() > 256 {
            return Err("a cron expression is at most 256 characters".into());
        }
        let expanded = match trimmed.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *".to_string(),
            "@monthly" => "0 0 1 * *".to_string(),
            "@weekly" => "0 0 * * 0".to_string(),
            "@daily" | "@midnight" => "0 0 * * *".to_string(),
            "@hourly" => "0 * * * *".to_string(),
            s if s.starts_with('@') => return Err(format!("unknown cron nickname: {trimmed:?}")),
            _ => trimmed.to_string(),
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let (sec, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            n => {
                return Err(format!(
                    "a cron expression has 5 fields (minute hour day-of-month month \
                     day-of-week) or 6 (seconds first); this one has {n}"
                ));
            }
        };
        let mut e = CronExpr {
            source: trimmed.to_string(),
            second: [false; 60],
            minute: [false; 60],
            hour: [false; 24],
            dom: [false; 32],
            month: [false; 13],
            dow: [false; 7],
            dom_star: is_star(rest[2]),
            dow_star: false,
            and_days: false,
        };
        field(sec, "seconds", 0, 59, None, &mut e.second)?;
        field(rest[0], "minute", 0, 59, None, &mut e.minute)?;
        field(rest[1], "hour", 0, 23, None, &mut e.hour)?;
        field(rest[2], "day-of-month", 1, 31, None, &mut e.dom)?;
        field(rest[3], "month", 1, 12, Some(&MONTHS), &mut e.month)?;
        let mut dow_src = rest[4];
        if let Some(s) = dow_src.strip_prefix('+') {
            e.and_days = true;
            dow_src = s;
        }
        e.dow_star = is_star(dow_src);
        let mut dow = [false; 8];
        field(dow_src, "day-of-week", 0, 7, Some(&DAYS), &mut dow)?;
        for (i, on) in dow.iter().enumerate() {
            if *on {
                e.dow[i % 7] = true;
            }
        }
        Ok(e)
    }

    fn day_matches(&self, d: Date) -> bool {
        let dom = self.dom[d.day() as usize];
        let dow = self.dow[d.weekday().to_sunday_zero_offset() as usize];
        if self.dom_star || self.dow_star || self.and_days {
            dom && dow
        } else {
            dom || dow
        }
    }
}

fn is_star(f: &str) -> bool {
    f.starts_with('*') || f.starts_with('?')
}

/// Reads one field (`*`, `?`, `a`, `a-b`, any of them `/step`, lists with `,`) into `set`.
fn field(
    src: &str,
    name: &str,
    lo: u32,
    hi: u32,
    names: Option<&[&str]>,
    set: &mut [bool],
) -> Result<(), String> {
    let bad = |why: &str| format!("cron {name} field {src:?}: {why}");
    let value = |s: &str| -> Result<u32, String> {
        if let Some(names) = names
            && let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s))
        {
            // Months are 1-based, days 0-based.
            return Ok(i as u32 + u32::from(names.len() == 12));
        }
        let v: u32 = s.parse().map_err(|_| {
            bad(&format!(
                "{s:?} is not a number{}",
                names.map_or("", |_| " or name")
            ))
        })?;
        if v < lo || v > hi {
            return Err(bad(&format!("{v} is outside {lo}-{hi}")));
        }
        Ok(v)
    };
    if src.is_empty() {
        return Err(bad("empty"));
    }
    for item in src.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().map_err(|_| bad("the step is not a number"))?;
                if step == 0 || step > hi {
                    return Err(bad(&format!("step {step} is outside 1-{hi}")));
                }
                (r, Some(step))
            }
            None => (item, None),
        };
        let (a, b) = if range == "*" || range == "?" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a)?, value(b)?);
            if a > b {
                return Err(bad(&format!("range {a}-{b} runs backwards")));
            }
            (a, b)
        } else {
            let a = value(range)?;
            // `a/step` runs from `a` to the end of the field.
            (a, if step.is_some() { hi } else { a })
        };
        let mut v = a;
        while v <= b {
            set[v as usize] = true;
            v += step.unwrap_or(1);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_millisecond()
    }

    fn iso(ms: i64) -> String {
        Timestamp::from_millisecond(ms).unwrap().to_string()
    }

    fn cron(expr: &str, tz: Option<&str>) -> Schedule {
        Schedule::Cron(Box::new(CronSchedule::parse(expr, tz).unwrap()))
    }

    /// The next `n` slots after `from`, each found from the previous one.
    fn walk(s: &Schedule, from: &str, n: usize) -> Vec<String> {
        let mut t = ms(from);
        (0..n)
            .map(|_| {
                t = s.next_after(t).unwrap();
                iso(t)
            })
            .collect()
    }

    #[test]
    fn every_counts_from_its_anchor() {
        let s = Schedule::Every {
            every_ms: 60_000,
            anchor_ms: ms("2026-01-01T00:00:30Z"),
        };
        // Before the anchor: the anchor itself.
        assert_eq!(
            iso(s.next_after(ms("2025-12-31T00:00:00Z")).unwrap()),
            "2026-01-01T00:00:30Z"
        );
        // On a slot: the next one, never the same.
        assert_eq!(
            iso(s.next_after(ms("2026-01-01T00:00:30Z")).unwrap()),
            "2026-01-01T00:01:30Z"
        );
        assert_eq!(
            iso(s.next_after(ms("2026-01-01T05:00:29.999Z")).unwrap()),
            "2026-01-01T05:00:30Z"
        );
        assert_eq!(s.period_ms(0), Some(60_000));
    }

    #[test]
    fn at_fires_once() {
        let s = Schedule::At {
            at_ms: ms("2027-02-01T16:00:00Z"),
        };
        assert_eq!(
            s.next_after(ms("2027-01-01T00:00:00Z")),
            Some(ms("2027-02-01T16:00:00Z"))
        );
        assert_eq!(s.next_after(ms("2027-02-01T16:00:00Z")), None);
        assert_eq!(s.period_ms(0), None);
    }

    #[test]
    fn five_and_six_fields() {
        let s = cron("*/15 9-10 * * 1-5", None);
        assert_eq!(
            walk(&s, "2026-12-04T10:40:00Z", 3), // a Friday
            [
                "2026-12-04T10:45:00Z",
                "2026-12-07T09:00:00Z",
                "2026-12-07T09:15:00Z"
            ]
        );
        let s = cron("*/20 * * * * *", None);
        assert_eq!(
            walk(&s, "2026-12-04T10:40:59.500Z", 2),
            ["2026-12-04T10:41:00Z", "2026-12-04T10:41:20Z"]
        );
        let s = cron("@daily", None);
        assert_eq!(
            walk(&s, "2026-12-04T10:40:00Z", 1),
            ["2026-12-05T00:00:00Z"]
        );
    }

    #[test]
    fn names_sunday_as_seven_and_question_mark() {
        let a = cron("0 9 ? JAN-MAR SUN", None);
        let b = cron("0 9 * 1-3 7", None);
        let c = cron("0 9 * 1-3 0", None);
        for s in [&a, &b, &c] {
            assert_eq!(walk(s, "2026-12-04T00:00:00Z", 1), ["2027-01-03T09:00:00Z"]);
        }
    }

    #[test]
    fn both_day_fields_restricted_means_either_unless_plus() {
        // 9:00 on the 15th, and on Mondays (Vixie cron, croner).
        let s = cron("0 9 15 * 1", None);
        assert_eq!(
            walk(&s, "2026-12-01T00:00:00Z", 3),
            [
                "2026-12-07T09:00:00Z",
                "2026-12-14T09:00:00Z",
                "2026-12-15T09:00:00Z"
            ]
        );
        // `+1`: the 15th only when it is a Monday (February 15, 2027).
        let s = cron("0 9 15 * +1", None);
        assert_eq!(
            walk(&s, "2026-12-01T00:00:00Z", 1),
            ["2027-02-15T09:00:00Z"]
        );
    }

    #[test]
    fn refusals_name_the_field() {
        for (expr, needle) in [
            ("* * * *", "5 fields"),
            ("61 * * * *", "minute field"),
            ("* 24 * * *", "hour field"),
            ("* * 0 * *", "day-of-month field"),
            ("* * * 13 *", "month field"),
            ("* * * * 8", "day-of-week field"),
            ("*/0 * * * *", "step 0"),
            ("5-1 * * * *", "backwards"),
            ("x * * * *", "not a number"),
            ("@often", "nickname"),
        ] {
            let err = CronExpr::parse(expr).unwrap_err();
            assert!(err.contains(needle), "{expr}: {err}");
        }
        assert!(CronSchedule::parse("* * * * *", Some("Mars/Olympus")).is_err());
        // Never fires: no slot at all.
        assert_eq!(cron("0 0 30 2 *", None).next_after(0), None);
    }

    #[test]
    fn zone_spring_forward_runs_the_skipped_slot_once() {
        // New York, 2027-03-14: 02:00 → 03:00.
        let s = cron("30 2 * * *", Some("America/New_York"));
        assert_eq!(
            walk(&s, "2027-03-13T12:00:00Z", 3),
            [
                "2027-03-14T07:30:00Z", // 02:30 EST would be; the day still runs, at 03:30 EDT
                "2027-03-15T06:30:00Z", // 02:30 EDT
                "2027-03-16T06:30:00Z",
            ]
        );
        // Every 15 minutes across the gap: no slot twice, none between 03:00 and 03:45 lost.
        let s = cron("*/15 * * * *", Some("America/New_York"));
        assert_eq!(
            walk(&s, "2027-03-14T06:40:00Z", 5), // 01:40 EST
            [
                "2027-03-14T06:45:00Z",
                "2027-03-14T07:00:00Z", // 02:00 → 03:00 EDT
                "2027-03-14T07:15:00Z",
                "2027-03-14T07:30:00Z",
                "2027-03-14T07:45:00Z",
            ]
        );
    }

    #[test]
    fn zone_fall_back_runs_the_repeated_slot_once() {
        // Berlin, 2026-10-25: 03:00 CEST → 02:00 CET, so 02:30 happens twice.
        let s = cron("30 2 * * *", Some("Europe/Berlin"));
        assert_eq!(
            walk(&s, "2026-10-24T12:00:00Z", 2),
            ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
        );
        // From inside the repeated hour (the second 02:10), the second 02:30 is not due again.
        assert_eq!(
            iso(s.next_after(ms("2026-10-25T01:10:00Z")).unwrap()),
            "2026-10-26T01:30:00Z"
        );
        // A zone's local midnight, across the change: each day once.
        let s = cron("0 0 * * *", Some("Europe/Berlin"));
        assert_eq!(
            walk(&s, "2026-10-24T12:00:00Z", 2),
            ["2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z"]
        );
    }

    #[test]
    fn catch_up_decisions() {
        let s = Schedule::Every {
            every_ms: 60_000,
            anchor_ms: 0,
        };
        // The 10:00 slot ran; down until 10:05:10: five slots passed, one run stands for them.
        let last = 10 * 3_600_000;
        let now = last + 5 * 60_000 + 10_000;
        assert_eq!(
            decide(&s, last, now, true, false),
            Decision::Run {
                slot: last + 5 * 60_000,
                missed: 5
            }
        );
        // With skipMissedJobs: skipped, and then nothing is due until the next slot.
        let d = decide(&s, last, now, true, true);
        assert_eq!(
            d,
            Decision::Skip {
                slot: last + 5 * 60_000,
                missed: 5
            }
        );
        let Decision::Skip { slot, .. } = d else {
            unreachable!()
        };
        assert_eq!(
            decide(&s, slot, now, false, true),
            Decision::Wait(Some(slot + 60_000))
        );
        // Not at boot (a long run, a stall): caught up once even under skipMissedJobs.
        assert!(matches!(
            decide(&s, last, now, false, true),
            Decision::Run { missed: 5, .. }
        ));
        // After the run, nothing is due again until the next slot.
        assert_eq!(
            decide(&s, last + 5 * 60_000, now, false, false),
            Decision::Wait(Some(last + 6 * 60_000))
        );
        // A one-shot due while down runs once, skipMissedJobs or not; then never again.
        let at = Schedule::At { at_ms: 1_000 };
        assert_eq!(
            decide(&at, 0, 5_000, true, true),
            Decision::Run {
                slot: 1_000,
                missed: 1
            }
        );
        assert_eq!(
            decide(&at, 1_000, 9_000, false, false),
            Decision::Wait(None)
        );
        // A clock stepped back: nothing due, the next slot stays where it was.
        assert_eq!(
            decide(&s, last, last - 3_600_000, false, false),
            Decision::Wait(Some(last + 60_000))
        );
        // Fifty agents' heartbeats down for a day: each one run, not 1,440.
        let hb = Schedule::Every {
            every_ms: 60_000,
            anchor_ms: 0,
        };
        assert!(matches!(
            decide(&hb, 0, 86_400_000, true, false),
            Decision::Run {
                slot: 86_400_000,
                missed: 1440
            }
        ));
    }

    #[test]
    fn clock_steps_do_not_repeat_or_lose_slots() {
        // The next slot comes from the last slot that ran, not from the clock: after a step
        // back the slot that ran is still behind; after a step forward every slot in between
        // counts as missed (the caller makes it one catch-up), and the next is after the step.
        let s = cron("0 * * * *", None);
        let ran = ms("2026-12-04T10:00:00Z");
        let next = s.next_after(ran).unwrap();
        assert_eq!(iso(next), "2026-12-04T11:00:00Z");
        let stepped_back = ms("2026-12-04T09:30:00Z");
        assert!(
            next > stepped_back,
            "nothing is due again after a step back"
        );
        let stepped_forward = ms("2026-12-04T15:20:00Z");
        assert_eq!(s.count_between(ran, stepped_forward, 100), 5);
        assert_eq!(
            iso(s.last_between(ran, stepped_forward).unwrap()),
            "2026-12-04T15:00:00Z"
        );
        assert_eq!(
            iso(s.next_after(stepped_forward).unwrap()),
            "2026-12-04T16:00:00Z"
        );
        let e = Schedule::Every {
            every_ms: 2_000,
            anchor_ms: 0,
        };
        assert_eq!(e.count_between(10_000, 20_000, 3), 3);
        assert_eq!(e.last_between(10_000, 20_999), Some(20_000));
        assert_eq!(e.last_between(10_000, 11_999), None);
    }
}
