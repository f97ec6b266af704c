//! Authentication: constant-time comparison of the shared secret, and a per-IP failure limit
//! (20 failures in 60 s, then refuse until the window slides) shared by HTTP and WebSocket.
//! The limiter is owned by the reactor thread, so it needs no lock; its size is bounded.

use crate::config::{Auth, AuthMode};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub const MAX_FAILURES: usize = 20;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Peers tracked at once; past this the oldest-failing peer is forgotten.
const MAX_PEERS: usize = 10_000;

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// What a client presented.
#[derive(Debug, Clone, Copy)]
pub enum Presented<'a> {
    Token(&'a str),
    Password(&'a str),
    /// HTTP's `Authorization: Bearer`: one slot for whichever secret is configured (the
    /// password in password mode — `keel status` sends it that way).
    Bearer(&'a str),
    Nothing,
}

/// Why authentication failed; the `details.code` OpenClaw clients understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    TokenMismatch,
    PasswordMismatch,
    Missing,
}

impl Failure {
    pub fn detail_code(self) -> &'static str {
        match self {
            Failure::TokenMismatch => "AUTH_TOKEN_MISMATCH",
            Failure::PasswordMismatch => "AUTH_PASSWORD_MISMATCH",
            Failure::Missing => "AUTH_REQUIRED",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Failure::TokenMismatch => {
                "unauthorized: gateway token mismatch (use the token in <state>/gateway.token)"
            }
            Failure::PasswordMismatch => "unauthorized: gateway password mismatch",
            Failure::Missing => "unauthorized: a gateway token is required",
        }
    }
}

/// Checks what a client presented against the configured secrets. Either secret that is
/// configured is accepted; the mode decides which failure is reported.
pub fn verify(auth: &Auth, presented: Presented<'_>) -> Result<(), Failure> {
    let matches = |want: &Option<String>, got: &str| {
        want.as_deref()
            .is_some_and(|w| constant_time_eq(w.as_bytes(), got.as_bytes()))
    };
    match presented {
        Presented::Token(t) if matches(&auth.token, t) => Ok(()),
        Presented::Password(p) if matches(&auth.password, p) => Ok(()),
        Presented::Bearer(b) if matches(&auth.token, b) | matches(&auth.password, b) => Ok(()),
        Presented::Bearer(_) if auth.mode == AuthMode::Password => Err(Failure::PasswordMismatch),
        Presented::Bearer(_) => Err(Failure::TokenMismatch),
        Presented::Token(_) => Err(Failure::TokenMismatch),
        Presented::Password(_) => Err(Failure::PasswordMismatch),
        Presented::Nothing if auth.mode == AuthMode::Password => Err(Failure::PasswordMismatch),
        Presented::Nothing => Err(Failure::Missing),
    }
}

/// Failures per peer IP in a sliding window.
#[derive(Default)]
pub struct FailureLimiter {
    peers: HashMap<IpAddr, VecDeque<Instant>>,
}

impl FailureLimiter {
    /// `Some(retry_after)` if `ip` has used up its failures.
    pub fn blocked(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let q = self.peers.get_mut(&ip)?;
        while q.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
            q.pop_front();
        }
        if q.is_empty() {
            self.peers.remove(&ip);
            return None;
        }
        if q.len() >= MAX_FAILURES {
            let oldest = *q.front()?;
            return Some(WINDOW.saturating_sub(now.duration_since(oldest)));
        }
        None
    }

    pub fn record_failure(&mut self, ip: IpAddr, now: Instant) {
        if self.peers.len() >= MAX_PEERS && !self.peers.contains_key(&ip) {
            self.prune(now);
            if self.peers.len() >= MAX_PEERS {
                let oldest = self
                    .peers
                    .iter()
                    .min_by_key(|(_, q)| q.back().copied())
                    .map(|(ip, _)| *ip);
                if let Some(o) = oldest {
                    self.peers.remove(&o);
                }
            }
        }
        let q = self.peers.entry(ip).or_default();
        q.push_back(now);
        while q.len() > MAX_FAILURES {
            q.pop_front();
        }
    }

    /// Forgets windows that have fully expired.
    pub fn prune(&mut self, now: Instant) {
        self.peers
            .retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < WINDOW));
    }

    pub fn tracked(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(token: Option<&str>, password: Option<&str>, mode: AuthMode) -> Auth {
        Auth {
            mode,
            token: token.map(String::from),
            password: password.map(String::from),
        }
    }

    #[test]
    fn eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }

    #[test]
    fn verify_secrets() {
        let a = auth(Some("t0k"), None, AuthMode::Token);
        assert_eq!(verify(&a, Presented::Token("t0k")), Ok(()));
        assert_eq!(
            verify(&a, Presented::Token("nope")),
            Err(Failure::TokenMismatch)
        );
        assert_eq!(
            verify(&a, Presented::Password("t0k")),
            Err(Failure::PasswordMismatch)
        );
        assert_eq!(verify(&a, Presented::Nothing), Err(Failure::Missing));
        let p = auth(None, Some("pw"), AuthMode::Password);
        assert_eq!(verify(&p, Presented::Password("pw")), Ok(()));
        assert_eq!(verify(&p, Presented::Bearer("pw")), Ok(()));
        assert_eq!(
            verify(&p, Presented::Bearer("pw2")),
            Err(Failure::PasswordMismatch)
        );
        assert_eq!(verify(&a, Presented::Bearer("t0k")), Ok(()));
        assert_eq!(
            verify(&a, Presented::Bearer("pw")),
            Err(Failure::TokenMismatch)
        );
        assert_eq!(
            verify(&p, Presented::Token("")),
            Err(Failure::TokenMismatch)
        );
    }

    #[test]
    fn limiter_blocks_after_twenty_and_slides() {
        let mut l = FailureLimiter::default();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..MAX_FAILURES {
            assert!(l.blocked(ip, t0).is_none(), "failure {i}");
            l.record_failure(ip, t0 + Duration::from_millis(i as u64));
        }
        let wait = l.blocked(ip, t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(wait, Duration::from_secs(59));
        assert!(
            l.blocked("127.0.0.10".parse().unwrap(), t0).is_none(),
            "per IP"
        );
        assert!(
            l.blocked(ip, t0 + WINDOW + Duration::from_millis(1))
                .is_none()
        );
        l.prune(t0 + WINDOW * 2);
        assert_eq!(l.tracked(), 0);
    }
}
