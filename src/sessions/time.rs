//! Calendar arithmetic for usage queries: days since the Unix epoch ↔ `YYYY-MM-DD`, fixed UTC
//! offsets (`UTC+5:30`), IANA time zones (`America/New_York`, whose offset changes with
//! daylight-saving time; from the database compiled into the binary), and ISO-8601
//! timestamps.

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;
/// Milliseconds in an hour.
pub const HOUR_MS: i64 = 3_600_000;

use crate::clock::{civil_from_days, days_from_civil};

/// Where local days are reckoned: a fixed offset from UTC, or an IANA time zone.
#[derive(Clone)]
pub enum Zone {
    /// Milliseconds east of UTC.
    Fixed(i64),
    Tz {
        name: String,
        tz: jiff::tz::TimeZone,
    },
}

impl Default for Zone {
    fn default() -> Zone {
        Zone::Fixed(0)
    }
}

impl PartialEq for Zone {
    fn eq(&self, o: &Zone) -> bool {
        match (self, o) {
            (Zone::Fixed(a), Zone::Fixed(b)) => a == b,
            (Zone::Tz { name: a, .. }, Zone::Tz { name: b, .. }) => a == b,
            _ => false,
        }
    }
}

impl Eq for Zone {}

impl std::hash::Hash for Zone {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        match self {
            Zone::Fixed(o) => o.hash(h),
            Zone::Tz { name, .. } => name.hash(h),
        }
    }
}

impl std::fmt::Debug for Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Zone::Fixed(o) => write!(f, "Fixed({o})"),
            Zone::Tz { name, .. } => write!(f, "Tz({name})"),
        }
    }
}

/// The longest time-zone name accepted (the longest in the database has 32 characters).
const MAX_ZONE_NAME: usize = 64;

impl Zone {
    /// An IANA time zone by name (case as in the database, or any case), from the database
    /// compiled into the binary: the host's files are never read, so a name cannot point
    /// anywhere. `None` for a name the database does not have.
    pub fn named(name: &str) -> Option<Zone> {
        if name.is_empty() || name.len() > MAX_ZONE_NAME || !name.is_ascii() {
            return None;
        }
        let tz = jiff::tz::TimeZone::get(name).ok()?;
        let name = tz.iana_name().unwrap_or(name).to_string();
        Some(Zone::Tz { name, tz })
    }

    /// The offset from UTC in force at `ts_ms`, in milliseconds east.
    pub fn offset_at(&self, ts_ms: i64) -> i64 {
        match self {
            Zone::Fixed(o) => *o,
            Zone::Tz { tz, .. } => jiff::Timestamp::from_millisecond(ts_ms)
                .map_or(0, |t| i64::from(tz.to_offset(t).seconds()) * 1000),
        }
    }

    /// The local day `ts_ms` falls on.
    pub fn day_of(&self, ts_ms: i64) -> i64 {
        day_of(ts_ms, self.offset_at(ts_ms))
    }

    /// The first instant of local day `day` (later than midnight where midnight is skipped by
    /// a daylight-saving change); `None` outside the years the database covers.
    pub fn day_start(&self, day: i64) -> Option<i64> {
        match self {
            Zone::Fixed(o) => Some(day * DAY_MS - o),
            Zone::Tz { tz, .. } => {
                let (y, m, d) = civil_from_days(day);
                let date = jiff::civil::Date::new(
                    i16::try_from(y).ok()?,
                    i8::try_from(m).ok()?,
                    i8::try_from(d).ok()?,
                )
                .ok()?;
                let z = date.to_zoned(tz.clone()).ok()?.start_of_day().ok()?;
                Some(z.timestamp().as_millisecond())
            }
        }
    }

    /// The zone's offsets across `[lo, hi)`: `(from, offset)`, the first from `i64::MIN`, one
    /// more at each change.
    pub fn offsets(&self, lo: i64, hi: i64) -> Vec<(i64, i64)> {
        let mut out = vec![(i64::MIN, self.offset_at(lo))];
        if let Zone::Tz { tz, .. } = self
            && let Ok(from) = jiff::Timestamp::from_millisecond(lo)
        {
            for t in tz.following(from) {
                let at = t.timestamp().as_millisecond();
                if at >= hi {
                    break;
                }
                out.push((at, i64::from(t.offset().seconds()) * 1000));
            }
        }
        out
    }
}

/// `YYYY-MM-DD` of a day number.
pub fn format_day(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Parses `YYYY-MM-DD` into a day number; `None` if it is not a real date.
pub fn parse_day(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y: i64 = s[..4].parse().ok()?;
    let m: u32 = s[5..7].parse().ok()?;
    let d: u32 = s[8..10].parse().ok()?;
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The day a millisecond timestamp falls on at `offset_ms` from UTC.
pub fn day_of(ts_ms: i64, offset_ms: i64) -> i64 {
    (ts_ms + offset_ms).div_euclid(DAY_MS)
}

/// Parses a UTC offset: `UTC+5:30`, `UTC-8`, `+05:30`, `-0800`, `UTC`, `Z`. Returns milliseconds
/// east of UTC, within ±14 h.
pub fn parse_utc_offset(s: &str) -> Option<i64> {
    let t = s.trim();
    // Every offset is ASCII; anything else would be sliced inside a character below.
    if !t.is_ascii() {
        return None;
    }
    let t = t
        .strip_prefix("UTC")
        .or_else(|| t.strip_prefix("GMT"))
        .unwrap_or(t);
    if t.is_empty() || t == "Z" {
        return Some(0);
    }
    let (sign, rest) = match t.as_bytes()[0] {
        b'+' => (1, &t[1..]),
        b'-' => (-1, &t[1..]),
        _ => return None,
    };
    let (h, m) = match rest.split_once(':') {
        Some((h, m)) => (h.parse::<i64>().ok()?, m.parse::<i64>().ok()?),
        None if rest.len() == 4 => (rest[..2].parse().ok()?, rest[2..].parse().ok()?),
        None => (rest.parse().ok()?, 0),
    };
    if !(0..=14).contains(&h) || !(0..60).contains(&m) || (h == 14 && m > 0) {
        return None;
    }
    Some(sign * (h * 3_600_000 + m * 60_000))
}

/// Parses an ISO-8601 timestamp (`2026-11-02T08:15:00.000Z`, `…+01:00`, no fraction, or a
/// bare date) into milliseconds since the epoch.
pub fn parse_iso_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    // Every timestamp is ASCII; anything else would be sliced inside a character below.
    if s.len() < 10 || !s.is_ascii() {
        return None;
    }
    let day = parse_day(&s[..10])?;
    let rest = &s[10..];
    if rest.is_empty() {
        return Some(day * DAY_MS);
    }
    let rest = rest.strip_prefix('T').or_else(|| rest.strip_prefix(' '))?;
    if rest.len() < 8 || rest.as_bytes()[2] != b':' || rest.as_bytes()[5] != b':' {
        return None;
    }
    let h: i64 = rest[..2].parse().ok()?;
    let mi: i64 = rest[3..5].parse().ok()?;
    let sec: i64 = rest[6..8].parse().ok()?;
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut tail = &rest[8..];
    let mut ms = 0i64;
    if let Some(frac) = tail.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let f = &frac[..digits];
        let padded: String = f.chars().chain(std::iter::repeat('0')).take(3).collect();
        ms = padded.parse().ok()?;
        tail = &frac[digits..];
    }
    let offset = if tail.is_empty() {
        0
    } else {
        parse_utc_offset(tail)?
    };
    Some(day * DAY_MS + h * 3_600_000 + mi * 60_000 + sec * 1000 + ms - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the transcript fuzz target: a timestamp with a multi-byte character where
    /// the parser slices (byte 10 of a date, a 4-byte offset) panicked, and that panic
    /// failed the usage index's refresh for every query.
    #[test]
    fn non_ascii_timestamps_and_offsets_are_refused_not_a_panic() {
        assert_eq!(parse_iso_ms("2026-11-1\u{362}17:24:30.690Z"), None);
        assert_eq!(parse_iso_ms("2026-11-13T17:24:3\u{e9}Z"), None);
        assert_eq!(parse_iso_ms("2026-11-13T17:24:30.6\u{e9}"), None);
        assert_eq!(parse_utc_offset("+a\u{e9}1"), None);
        assert_eq!(parse_utc_offset("UTC+\u{e9}:30"), None);
        assert_eq!(
            parse_iso_ms("2026-11-13T17:24:30.690Z"),
            Some(parse_day("2026-11-13").unwrap() * DAY_MS + 62_670_690)
        );
    }

    #[test]
    fn days_round_trip() {
        for d in [-1000, -1, 0, 1, 10_957, 20_000, 20_409, 60_000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
            assert_eq!(parse_day(&format_day(d)), Some(d));
        }
        assert_eq!(format_day(0), "1970-01-01");
        assert_eq!(parse_day("2024-02-29"), Some(19_782));
        assert_eq!(parse_day("2023-02-29"), None);
        assert_eq!(parse_day("2026-13-01"), None);
        assert_eq!(parse_day("2026-1-01"), None);
    }

    #[test]
    fn offsets() {
        assert_eq!(parse_utc_offset("UTC+5:30"), Some(19_800_000));
        assert_eq!(parse_utc_offset("UTC-8"), Some(-28_800_000));
        assert_eq!(parse_utc_offset("+05:45"), Some(20_700_000));
        assert_eq!(parse_utc_offset("-0800"), Some(-28_800_000));
        assert_eq!(parse_utc_offset("UTC"), Some(0));
        assert_eq!(parse_utc_offset("UTC+15"), None);
        assert_eq!(parse_utc_offset("EST"), None);
        // 23:30 UTC on day d is the next day at UTC+5:30.
        let t = 20_000 * DAY_MS + 23 * 3_600_000 + 30 * 60_000;
        assert_eq!(day_of(t, 0), 20_000);
        assert_eq!(day_of(t, 19_800_000), 20_001);
        assert_eq!(day_of(20_000 * DAY_MS + 3_600_000, -28_800_000), 19_999);
    }

    #[test]
    fn iso_timestamps() {
        assert_eq!(parse_iso_ms("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(
            parse_iso_ms("2026-11-21T13:05:09.123Z"),
            Some(1_795_266_309_123)
        );
        assert_eq!(
            parse_iso_ms("2026-11-21T14:05:09.123+01:00"),
            Some(1_795_266_309_123)
        );
        assert_eq!(
            parse_iso_ms("2026-11-21T13:05:09Z"),
            Some(1_795_266_309_000)
        );
        assert_eq!(parse_iso_ms("2026-11-21"), Some(1_795_219_200_000));
        assert_eq!(parse_iso_ms("2026-11-21T25:00:00Z"), None);
        assert_eq!(parse_iso_ms("yesterday"), None);
    }
}
