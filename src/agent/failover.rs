//! Failover between model candidates, and cooldowns.
//!
//! A run walks its candidates (`agents.*.model.primary`, then `fallbacks`, across providers),
//! skipping those cooling down, and moves to the next one as soon as a failure is known.
//! Cooldowns are keyed by (provider, model, reason) and climb a ladder — 1 min, 5 min,
//! 25 min, 1 h — while the same failure repeats; a success clears them. A 429's `Retry-After`
//! sets the cooldown instead (capped at an hour: a provider that asks for more does not get to
//! freeze a lane). A configuration error (a 404 that names no model: a wrong base URL) and a
//! malformed request are not the candidate's fault and set no cooldown; a context overflow
//! stops the run with a clear error instead of failing over (every candidate would refuse it).

use std::collections::HashMap;
use std::time::{Duration, Instant};

pub const LADDER: [Duration; 4] = [
    Duration::from_secs(60),
    Duration::from_secs(300),
    Duration::from_secs(1500),
    Duration::from_secs(3600),
];

/// Why a candidate failed, as reported to clients and used for cooldowns.
pub fn fails_over(reason: &str) -> bool {
    reason != "context_overflow" && reason != "cancelled"
}

/// Whether a failure for this reason cools the candidate down.
pub fn cools_down(reason: &str) -> bool {
    !matches!(
        reason,
        "config_error" | "format" | "context_overflow" | "cancelled"
    )
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    until: Instant,
    /// Index into [`LADDER`] of the last cooldown applied.
    level: usize,
}

/// Active and recent cooldowns.
#[derive(Debug, Default)]
pub struct Cooldowns {
    map: HashMap<(String, String, String), Entry>,
}

impl Cooldowns {
    /// The reason and end of a cooldown that covers (provider, model) now, if any.
    pub fn cooling(&self, provider: &str, model: &str, now: Instant) -> Option<(String, Instant)> {
        self.map
            .iter()
            .filter(|((p, m, _), e)| p == provider && m == model && e.until > now)
            .max_by_key(|(_, e)| e.until)
            .map(|((_, _, r), e)| (r.clone(), e.until))
    }

    /// Records a failure; returns the cooldown applied, if any.
    pub fn record_failure(
        &mut self,
        provider: &str,
        model: &str,
        reason: &str,
        retry_after: Option<Duration>,
        now: Instant,
    ) -> Option<Duration> {
        if !cools_down(reason) {
            return None;
        }
        let key = (provider.to_string(), model.to_string(), reason.to_string());
        let level = match self.map.get(&key) {
            // The same failure again: one step up the ladder.
            Some(e) => (e.level + 1).min(LADDER.len() - 1),
            None => 0,
        };
        let wait = match retry_after {
            Some(ra) if reason == "rate_limit" => ra.min(LADDER[LADDER.len() - 1]),
            _ => LADDER[level],
        };
        self.map.insert(
            key,
            Entry {
                until: now + wait,
                level,
            },
        );
        Some(wait)
    }

    /// A success clears every cooldown of the candidate.
    pub fn record_success(&mut self, provider: &str, model: &str) {
        self.map
            .retain(|(p, m, _), _| !(p == provider && m == model));
    }

    /// Forgets entries long past (their ladder position no longer matters).
    pub fn prune(&mut self, now: Instant) {
        self.map
            .retain(|_, e| now.saturating_duration_since(e.until) < Duration::from_secs(24 * 3600));
    }

    /// Every active cooldown, for `status`: (provider, model, reason, seconds left).
    pub fn active(&self, now: Instant) -> Vec<(String, String, String, u64)> {
        let mut v: Vec<_> = self
            .map
            .iter()
            .filter(|(_, e)| e.until > now)
            .map(|((p, m, r), e)| {
                (
                    p.clone(),
                    m.clone(),
                    r.clone(),
                    e.until.saturating_duration_since(now).as_secs(),
                )
            })
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ladder_climbs_while_the_failure_repeats_and_a_success_clears_it() {
        let mut c = Cooldowns::default();
        let t0 = Instant::now();
        assert_eq!(
            c.record_failure("p", "m", "overloaded", None, t0),
            Some(LADDER[0])
        );
        assert!(c.cooling("p", "m", t0 + Duration::from_secs(59)).is_some());
        assert!(c.cooling("p", "m", t0 + Duration::from_secs(61)).is_none());
        assert!(c.cooling("p", "other", t0).is_none(), "keyed by model");
        let t1 = t0 + Duration::from_secs(61);
        assert_eq!(
            c.record_failure("p", "m", "overloaded", None, t1),
            Some(LADDER[1])
        );
        assert_eq!(
            c.record_failure("p", "m", "overloaded", None, t1),
            Some(LADDER[2])
        );
        assert_eq!(
            c.record_failure("p", "m", "overloaded", None, t1),
            Some(LADDER[3])
        );
        assert_eq!(
            c.record_failure("p", "m", "overloaded", None, t1),
            Some(LADDER[3]),
            "an hour at most"
        );
        assert_eq!(
            c.record_failure("p", "m", "timeout", None, t1),
            Some(LADDER[0]),
            "keyed by reason"
        );
        c.record_success("p", "m");
        assert!(c.cooling("p", "m", t1).is_none());
        assert_eq!(
            c.record_failure("p", "m", "overloaded", None, t1),
            Some(LADDER[0])
        );
    }

    #[test]
    fn retry_after_sets_a_rate_limit_cooldown_capped_at_an_hour() {
        let mut c = Cooldowns::default();
        let t0 = Instant::now();
        assert_eq!(
            c.record_failure("p", "m", "rate_limit", Some(Duration::from_secs(7)), t0),
            Some(Duration::from_secs(7))
        );
        assert_eq!(c.cooling("p", "m", t0).unwrap().0, "rate_limit");
        assert_eq!(
            c.record_failure(
                "p",
                "m",
                "rate_limit",
                Some(Duration::from_secs(1800 * 60)),
                t0
            ),
            Some(LADDER[3])
        );
    }

    #[test]
    fn some_failures_never_cool_down() {
        let mut c = Cooldowns::default();
        let t0 = Instant::now();
        for r in ["config_error", "format", "context_overflow"] {
            assert_eq!(c.record_failure("p", "m", r, None, t0), None, "{r}");
        }
        assert!(c.cooling("p", "m", t0).is_none());
        assert!(!fails_over("context_overflow"));
        assert!(fails_over("model_not_found") && fails_over("config_error"));
    }
}
