//! Failover between model candidates, and cooldowns.
//!
//! A run walks its candidates (`agents.*.model.primary`, then `fallbacks`, across providers),
//! skipping those cooling down, and moves to the next one as soon as a failure is known.
//! Every decision is made on a [`Reason`], the provider's [`FailureKind`] as failover sees it;
//! its string form is what clients read and is produced in one place ([`Reason::as_str`]).
//! Cooldowns are keyed by (candidate, reason) and climb a ladder — 1 min, 5 min,
//! 25 min, 1 h — while the same failure repeats; a success clears them. A 429's `Retry-After`
//! sets the cooldown instead (capped at an hour: a provider that asks for more does not get to
//! freeze a lane). A configuration error (a 404 that names no model: a wrong base URL) and a
//! malformed request are not the candidate's fault and set no cooldown; a context overflow
//! stops the run with a clear error instead of failing over (every candidate would refuse it),
//! and so does our own cancel, which is nobody's failure.

use super::provider::FailureKind;
use crate::config::agents::ModelRef;
use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

pub const LADDER: [Duration; 4] = [
    Duration::from_secs(60),
    Duration::from_secs(300),
    Duration::from_secs(1500),
    Duration::from_secs(3600),
];

/// Why a candidate's call failed, as failover decides on it and clients see it (the `reason`
/// of an `agent` error event): the provider's [`FailureKind`] without its `Retry-After`, and
/// our own cancel, which the provider layer cannot tell from other cut transfers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    Auth,
    AuthPermanent,
    Billing,
    RateLimit,
    Overloaded,
    ServerError,
    Timeout,
    ModelNotFound,
    ContextOverflow,
    Format,
    ConfigError,
    /// The run was aborted, hit its deadline or was drained while the call ran.
    Cancelled,
}

impl Reason {
    pub const ALL: [Reason; 12] = [
        Reason::Auth,
        Reason::AuthPermanent,
        Reason::Billing,
        Reason::RateLimit,
        Reason::Overloaded,
        Reason::ServerError,
        Reason::Timeout,
        Reason::ModelNotFound,
        Reason::ContextOverflow,
        Reason::Format,
        Reason::ConfigError,
        Reason::Cancelled,
    ];

    /// A provider failure as failover sees it. An answer keel has no rule for (an odd status,
    /// one too large to read) is the provider's trouble, like any other server error.
    pub fn of(kind: FailureKind) -> Reason {
        match kind {
            FailureKind::Auth => Reason::Auth,
            FailureKind::AuthPermanent => Reason::AuthPermanent,
            FailureKind::Billing => Reason::Billing,
            FailureKind::RateLimit { .. } => Reason::RateLimit,
            FailureKind::Overloaded => Reason::Overloaded,
            FailureKind::ServerError | FailureKind::Other => Reason::ServerError,
            FailureKind::Timeout => Reason::Timeout,
            FailureKind::ModelNotFound => Reason::ModelNotFound,
            FailureKind::ContextOverflow => Reason::ContextOverflow,
            FailureKind::Format => Reason::Format,
            FailureKind::ConfigError => Reason::ConfigError,
        }
    }

    /// The name OpenClaw clients see (README, "Agent runs").
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Auth => "auth",
            Reason::AuthPermanent => "auth_permanent",
            Reason::Billing => "billing",
            Reason::RateLimit => "rate_limit",
            Reason::Overloaded => "overloaded",
            Reason::ServerError => "server_error",
            Reason::Timeout => "timeout",
            Reason::ModelNotFound => "model_not_found",
            Reason::ContextOverflow => "context_overflow",
            Reason::Format => "format",
            Reason::ConfigError => "config_error",
            Reason::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the next candidate is tried after a failure for this reason.
pub fn fails_over(reason: Reason) -> bool {
    match reason {
        // Every candidate would refuse the same conversation; a cancelled run wants no answer.
        Reason::ContextOverflow | Reason::Cancelled => false,
        Reason::Auth
        | Reason::AuthPermanent
        | Reason::Billing
        | Reason::RateLimit
        | Reason::Overloaded
        | Reason::ServerError
        | Reason::Timeout
        | Reason::ModelNotFound
        | Reason::Format
        | Reason::ConfigError => true,
    }
}

/// Whether a failure for this reason cools the candidate down.
pub fn cools_down(reason: Reason) -> bool {
    match reason {
        // Not the candidate's fault: keel's configuration, the request, the conversation, or
        // our own cancel. Waiting would only hide a working candidate.
        Reason::ConfigError | Reason::Format | Reason::ContextOverflow | Reason::Cancelled => false,
        Reason::Auth
        | Reason::AuthPermanent
        | Reason::Billing
        | Reason::RateLimit
        | Reason::Overloaded
        | Reason::ServerError
        | Reason::Timeout
        | Reason::ModelNotFound => true,
    }
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
    map: HashMap<(ModelRef, Reason), Entry>,
}

impl Cooldowns {
    /// The reason and end of a cooldown that covers the candidate now, if any.
    pub fn cooling(&self, candidate: &ModelRef, now: Instant) -> Option<(Reason, Instant)> {
        self.map
            .iter()
            .filter(|((c, _), e)| c == candidate && e.until > now)
            .max_by_key(|(_, e)| e.until)
            .map(|((_, r), e)| (*r, e.until))
    }

    /// Records a failure; returns the cooldown applied, if any.
    pub fn record_failure(
        &mut self,
        candidate: &ModelRef,
        reason: Reason,
        retry_after: Option<Duration>,
        now: Instant,
    ) -> Option<Duration> {
        if !cools_down(reason) {
            return None;
        }
        let key = (candidate.clone(), reason);
        let level = match self.map.get(&key) {
            // The same failure again: one step up the ladder.
            Some(e) => (e.level + 1).min(LADDER.len() - 1),
            None => 0,
        };
        let wait = match (reason, retry_after) {
            (Reason::RateLimit, Some(ra)) => ra.min(LADDER[LADDER.len() - 1]),
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
    pub fn record_success(&mut self, candidate: &ModelRef) {
        self.map.retain(|(c, _), _| c != candidate);
    }

    /// Forgets entries long past (their ladder position no longer matters).
    pub fn prune(&mut self, now: Instant) {
        self.map
            .retain(|_, e| now.saturating_duration_since(e.until) < Duration::from_secs(24 * 3600));
    }

    /// Every active cooldown, for `status`: (candidate, reason, seconds left).
    pub fn active(&self, now: Instant) -> Vec<(ModelRef, Reason, u64)> {
        let mut v: Vec<_> = self
            .map
            .iter()
            .filter(|(_, e)| e.until > now)
            .map(|((c, r), e)| {
                (
                    c.clone(),
                    *r,
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

    fn pm(model: &str) -> ModelRef {
        ModelRef {
            provider: "p".into(),
            model: model.into(),
        }
    }

    #[test]
    fn ladder_climbs_while_the_failure_repeats_and_a_success_clears_it() {
        let mut c = Cooldowns::default();
        let m = pm("m");
        let t0 = Instant::now();
        assert_eq!(
            c.record_failure(&m, Reason::Overloaded, None, t0),
            Some(LADDER[0])
        );
        assert!(c.cooling(&m, t0 + Duration::from_secs(59)).is_some());
        assert!(c.cooling(&m, t0 + Duration::from_secs(61)).is_none());
        assert!(c.cooling(&pm("other"), t0).is_none(), "keyed by model");
        let t1 = t0 + Duration::from_secs(61);
        assert_eq!(
            c.record_failure(&m, Reason::Overloaded, None, t1),
            Some(LADDER[1])
        );
        assert_eq!(
            c.record_failure(&m, Reason::Overloaded, None, t1),
            Some(LADDER[2])
        );
        assert_eq!(
            c.record_failure(&m, Reason::Overloaded, None, t1),
            Some(LADDER[3])
        );
        assert_eq!(
            c.record_failure(&m, Reason::Overloaded, None, t1),
            Some(LADDER[3]),
            "an hour at most"
        );
        assert_eq!(
            c.record_failure(&m, Reason::Timeout, None, t1),
            Some(LADDER[0]),
            "keyed by reason"
        );
        c.record_success(&m);
        assert!(c.cooling(&m, t1).is_none());
        assert_eq!(
            c.record_failure(&m, Reason::Overloaded, None, t1),
            Some(LADDER[0])
        );
    }

    #[test]
    fn retry_after_sets_a_rate_limit_cooldown_capped_at_an_hour() {
        let mut c = Cooldowns::default();
        let m = pm("m");
        let t0 = Instant::now();
        assert_eq!(
            c.record_failure(&m, Reason::RateLimit, Some(Duration::from_secs(7)), t0),
            Some(Duration::from_secs(7))
        );
        assert_eq!(c.cooling(&m, t0).unwrap().0, Reason::RateLimit);
        assert_eq!(
            c.record_failure(
                &m,
                Reason::RateLimit,
                Some(Duration::from_secs(1800 * 60)),
                t0
            ),
            Some(LADDER[3])
        );
    }

    #[test]
    fn some_failures_never_cool_down() {
        let mut c = Cooldowns::default();
        let m = pm("m");
        let t0 = Instant::now();
        for r in [Reason::ConfigError, Reason::Format, Reason::ContextOverflow] {
            assert_eq!(c.record_failure(&m, r, None, t0), None, "{r}");
        }
        assert!(c.cooling(&m, t0).is_none());
        assert!(!fails_over(Reason::ContextOverflow));
        assert!(fails_over(Reason::ModelNotFound) && fails_over(Reason::ConfigError));
    }

    /// The whole decision table, one row per reason: (name clients see, fails over, cools down).
    #[test]
    fn every_reason_has_its_wire_name_and_decisions() {
        let table = [
            (Reason::Auth, "auth", true, true),
            (Reason::AuthPermanent, "auth_permanent", true, true),
            (Reason::Billing, "billing", true, true),
            (Reason::RateLimit, "rate_limit", true, true),
            (Reason::Overloaded, "overloaded", true, true),
            (Reason::ServerError, "server_error", true, true),
            (Reason::Timeout, "timeout", true, true),
            (Reason::ModelNotFound, "model_not_found", true, true),
            (Reason::ContextOverflow, "context_overflow", false, false),
            (Reason::Format, "format", true, false),
            (Reason::ConfigError, "config_error", true, false),
            (Reason::Cancelled, "cancelled", false, false),
        ];
        assert_eq!(
            table.map(|(r, ..)| r),
            Reason::ALL,
            "one row per reason, in order"
        );
        let t0 = Instant::now();
        for (r, name, over, cool) in table {
            assert_eq!(r.as_str(), name);
            assert_eq!(r.to_string(), name);
            assert_eq!(fails_over(r), over, "{r} fails over");
            assert_eq!(cools_down(r), cool, "{r} cools down");
            let mut c = Cooldowns::default();
            let applied = c.record_failure(&pm("m"), r, None, t0);
            assert_eq!(applied, cool.then_some(LADDER[0]), "{r}");
            assert_eq!(
                c.cooling(&pm("m"), t0).map(|(why, _)| why),
                cool.then_some(r)
            );
        }
    }

    #[test]
    fn every_failure_kind_maps_to_the_reason_of_the_same_name() {
        use FailureKind::*;
        let kinds = [
            Auth,
            AuthPermanent,
            Billing,
            RateLimit { retry_after: None },
            RateLimit {
                retry_after: Some(Duration::from_secs(3)),
            },
            Overloaded,
            ServerError,
            Timeout,
            ModelNotFound,
            ContextOverflow,
            Format,
            ConfigError,
        ];
        for k in kinds {
            assert_eq!(Reason::of(k).as_str(), k.as_str(), "{k:?}");
        }
        assert_eq!(Reason::of(Other), Reason::ServerError);
        assert_eq!(Other.as_str(), "other", "messages still say what it was");
    }

    #[test]
    fn cooldowns_are_keyed_by_candidate_and_reason() {
        let mut c = Cooldowns::default();
        let (a, b) = (pm("a"), pm("b"));
        let t0 = Instant::now();
        c.record_failure(&a, Reason::Overloaded, None, t0);
        c.record_failure(&a, Reason::Overloaded, None, t0);
        // Another reason starts its own ladder; another model is untouched.
        assert_eq!(
            c.record_failure(&a, Reason::Auth, None, t0),
            Some(LADDER[0])
        );
        assert_eq!(
            c.record_failure(&b, Reason::Overloaded, None, t0),
            Some(LADDER[0])
        );
        // The longest cooldown is the one reported.
        assert_eq!(c.cooling(&a, t0).map(|(r, _)| r), Some(Reason::Overloaded));
        // `Retry-After` only sets a rate limit's cooldown.
        assert_eq!(
            c.record_failure(&b, Reason::Timeout, Some(Duration::from_secs(7)), t0),
            Some(LADDER[0])
        );
        let active: Vec<(String, Reason, u64)> = c
            .active(t0)
            .into_iter()
            .map(|(m, r, s)| (m.to_string(), r, s))
            .collect();
        assert_eq!(
            active,
            [
                ("p/a".to_string(), Reason::Auth, 60),
                ("p/a".to_string(), Reason::Overloaded, 300),
                ("p/b".to_string(), Reason::Overloaded, 60),
                ("p/b".to_string(), Reason::Timeout, 60),
            ]
        );
        c.record_success(&a);
        assert!(c.cooling(&a, t0).is_none());
        assert!(
            c.cooling(&b, t0).is_some(),
            "a success clears its own candidate only"
        );
    }
}
