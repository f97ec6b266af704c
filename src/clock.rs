//! Time and randomness helpers shared by every thread.
//!
//! Timestamps that several threads read and write (job progress, reactor heartbeat) are kept as
//! milliseconds since one process-wide monotonic epoch, so they fit in an `AtomicU64`. Wall-clock
//! time is used only for what clients see (`ts` fields, file names).

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The process-wide monotonic epoch; the first call fixes it.
pub fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds from the epoch to `at` (0 for instants before it).
pub fn mono_ms(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_millis() as u64
}

/// The instant `ms` milliseconds after the epoch.
pub fn from_mono_ms(ms: u64) -> Instant {
    epoch() + Duration::from_millis(ms)
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A UTC timestamp for file names and logs: `2026-11-21T13-05-09.123Z` (no colons, so it is a
/// portable file name).
pub fn file_stamp(wall_ms: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(wall_ms / 1000);
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}-{mi:02}-{s:02}.{:03}Z",
        wall_ms % 1000
    )
}

/// An ISO-8601 UTC timestamp: `2026-11-21T13:05:09.123Z`.
pub fn iso8601(wall_ms: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(wall_ms / 1000);
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:03}Z",
        wall_ms % 1000
    )
}

/// Seconds since the Unix epoch → (year, month, day, hour, minute, second), proleptic Gregorian.
fn civil(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        ((rem % 3600) / 60) as u32,
        (rem % 60) as u32,
    )
}

/// Fills `buf` from the kernel's random source. Used for tokens and to seed [`Rng`].
pub fn os_random(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// A small non-cryptographic generator (splitmix64) for connection ids, nonces and jitter.
/// Secrets never come from here: the gateway token comes from [`os_random`].
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// Seeded from the kernel, falling back to the clock if `/dev/urandom` cannot be read.
    pub fn from_os() -> Rng {
        let mut b = [0u8; 8];
        match os_random(&mut b) {
            Ok(()) => Rng(u64::from_le_bytes(b)),
            Err(_) => Rng(wall_ms() ^ u64::from(std::process::id()) << 32),
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A random (version 4 shaped) UUID string.
    pub fn uuid(&mut self) -> String {
        let a = self.next_u64();
        let b = self.next_u64();
        let a = (a & !0xF000) | 0x4000;
        let b = (b & !(0b11 << 62)) | (0b10 << 62);
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xFFFF,
            a & 0xFFFF,
            b >> 48,
            b & 0xFFFF_FFFF_FFFF
        )
    }
}

/// Days since 1970-01-01 for a civil date (proleptic Gregorian).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day number.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_795_266_309_123), "2026-11-21T13:05:09.123Z");
        assert_eq!(file_stamp(951_782_400_000), "2000-02-29T00-00-00.000Z");
    }

    #[test]
    fn uuid_shape() {
        let u = Rng::new(7).uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
    }
}
