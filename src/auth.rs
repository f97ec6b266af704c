//! Authentication: constant-time comparison of the shared secrets, who the client is (its
//! own address, or the one a trusted proxy forwards), and a failure limiter per client and
//! per credential scope.
//!
//! Rules (each one a defect that was reproduced before it was a rule):
//! - A correct secret always authenticates. It is verified first, in constant time; the
//!   limiter only refuses failures — a wrong secret from a client past its limit gets 429
//!   instead of 401 — so a stranger who shares an address with the operator (everyone behind
//!   one TLS proxy) cannot lock the operator out.
//! - The gateway secret and the hooks token have separate buckets: webhook senders failing
//!   cannot lock out the dashboard or the CLI, nor the other way round.
//! - A client on this machine (a loopback peer carrying no forwarding header) is exempt unless
//!   `gateway.auth.rateLimit.exemptLoopback` is false: the local CLI cannot be locked out.
//! - `X-Forwarded-For` is believed only from a peer in `gateway.trustedProxies`: the client is
//!   the right-most address in the chain that is not itself a trusted proxy. Anyone else's
//!   forwarding headers are ignored for attribution, and disqualify a loopback peer from the
//!   exemption (a same-host proxy that is not configured would otherwise make every stranger
//!   look local).
//! - Missing credentials guess nothing: they are never counted and never answered 429, only
//!   "a gateway token is required" — a browser that reloads without its secret and reconnects
//!   in a loop must not lock itself (or everyone behind its proxy) out of the token it is
//!   about to be given. An empty or blank secret is a missing one. Successful attempts do not
//!   reset a bucket (they need not: they pass anyway).
//!
//! The limiters are owned by the reactor thread, so they need no lock; their size is bounded.

use crate::config::{Auth, AuthLimits, AuthMode, RateLimit};
use ipnet::IpNet;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Peers tracked at once per bucket; past this the oldest-failing peer is forgotten.
const MAX_PEERS: usize = 10_000;

/// The hooks token's limits, fixed as OpenClaw's are: 20 failures a minute, then a minute out.
pub const HOOK_LIMITS: AuthLimits = AuthLimits {
    max_attempts: 20,
    window: Duration::from_secs(60),
    lockout: Duration::from_secs(60),
};

/// Which secret was presented: each has its own bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The gateway token or password (`/api/rpc`, `/metrics`, WebSocket `connect`).
    Gateway,
    /// `hooks.token`.
    Hooks,
}

/// The forwarding headers of a request, as the reactor read them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forwarding {
    /// Every `X-Forwarded-For` value, joined with `,` in the order received.
    pub x_forwarded_for: Option<String>,
    /// Any header a proxy adds: `Forwarded`, `X-Real-IP`, `X-Forwarded-*`.
    pub proxied: bool,
}

/// Who a request is from, for the failure limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The address failures are counted against.
    pub ip: IpAddr,
    /// On this machine: a loopback peer with no forwarding header.
    pub local: bool,
    /// Forwarding headers came from a peer not in `gateway.trustedProxies` (so were ignored).
    pub untrusted_forwarding: bool,
}

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    proxies.iter().any(|n| n.contains(&ip))
}

/// One `X-Forwarded-For` element: an address, possibly `[v6]`.
fn forwarded_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    let s = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    s.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// Resolves the client of a request from its peer address and forwarding headers.
pub fn client(peer: IpAddr, fwd: &Forwarding, proxies: &[IpNet]) -> Client {
    let peer = peer.to_canonical();
    let direct = Client {
        ip: peer,
        local: peer.is_loopback() && !fwd.proxied,
        untrusted_forwarding: false,
    };
    if !trusted(peer, proxies) {
        return Client {
            untrusted_forwarding: fwd.proxied,
            ..direct
        };
    }
    let Some(chain) = fwd.x_forwarded_for.as_deref() else {
        return direct;
    };
    // From the proxy nearest keel outwards: the first hop that is not a trusted proxy is the
    // client. A hop that is not an address ends the walk at the last one that was.
    let mut ip = peer;
    for hop in chain.rsplit(',') {
        match forwarded_ip(hop) {
            Some(h) if trusted(h, proxies) => ip = h,
            Some(h) => {
                ip = h;
                break;
            }
            None => break,
        }
    }
    Client {
        ip,
        // Whatever the chain says, the request came through a proxy.
        local: false,
        untrusted_forwarding: false,
    }
}

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
    /// `connect`'s `auth.token` and `auth.password` both: OpenClaw's dashboard copies the one
    /// it has into both, so either matching its own configured secret passes.
    Both {
        token: &'a str,
        password: &'a str,
    },
    Nothing,
}

impl<'a> Presented<'a> {
    /// What `connect`'s `auth` block presents; empty or blank values are not secrets.
    pub fn from_connect(token: Option<&'a str>, password: Option<&'a str>) -> Presented<'a> {
        let given = |s: Option<&'a str>| s.filter(|v| !v.trim().is_empty());
        match (given(token), given(password)) {
            (Some(token), Some(password)) => Presented::Both { token, password },
            (Some(t), _) => Presented::Token(t),
            (None, Some(p)) => Presented::Password(p),
            (None, None) => Presented::Nothing,
        }
    }
}

/// Why authentication failed; the `details.code` OpenClaw clients understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    TokenMismatch,
    PasswordMismatch,
    /// No secret at all, in token mode.
    Missing,
    /// No secret at all, in password mode.
    PasswordMissing,
}

impl Failure {
    /// OpenClaw's codes, which its clients act on (its dashboard shows its login form for the
    /// `*_MISSING` ones).
    pub fn detail_code(self) -> &'static str {
        match self {
            Failure::TokenMismatch => "AUTH_TOKEN_MISMATCH",
            Failure::PasswordMismatch => "AUTH_PASSWORD_MISMATCH",
            Failure::Missing => "AUTH_TOKEN_MISSING",
            Failure::PasswordMissing => "AUTH_PASSWORD_MISSING",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Failure::TokenMismatch => {
                "unauthorized: gateway token mismatch (use the token in <state>/gateway.token)"
            }
            Failure::PasswordMismatch => "unauthorized: gateway password mismatch",
            Failure::Missing => "unauthorized: a gateway token is required",
            Failure::PasswordMissing => "unauthorized: a gateway password is required",
        }
    }

    /// A secret was presented and was wrong: only these count toward the lockout.
    pub fn guessed(self) -> bool {
        matches!(self, Failure::TokenMismatch | Failure::PasswordMismatch)
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
        Presented::Both { token, password }
            if matches(&auth.token, token) | matches(&auth.password, password) =>
        {
            Ok(())
        }
        Presented::Both { .. } if auth.mode == AuthMode::Password => Err(Failure::PasswordMismatch),
        Presented::Both { .. } => Err(Failure::TokenMismatch),
        Presented::Bearer(_) if auth.mode == AuthMode::Password => Err(Failure::PasswordMismatch),
        Presented::Bearer(_) => Err(Failure::TokenMismatch),
        Presented::Token(_) => Err(Failure::TokenMismatch),
        Presented::Password(_) => Err(Failure::PasswordMismatch),
        Presented::Nothing if auth.mode == AuthMode::Password => Err(Failure::PasswordMissing),
        Presented::Nothing => Err(Failure::Missing),
    }
}

#[derive(Debug, Default)]
struct Peer {
    failures: VecDeque<Instant>,
    locked_until: Option<Instant>,
}

impl Peer {
    fn last(&self) -> Option<Instant> {
        self.failures.back().copied().max(self.locked_until)
    }
}

/// Failures per client address in a sliding window, with a lockout once they reach the limit.
#[derive(Debug, Default)]
pub struct FailureLimiter {
    peers: HashMap<IpAddr, Peer>,
}

impl FailureLimiter {
    /// `Some(retry_after)` while `ip` is locked out.
    pub fn locked(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let p = self.peers.get_mut(&ip)?;
        match p.locked_until {
            Some(t) if now < t => Some(t - now),
            Some(_) => {
                // The lockout is over: the client starts afresh.
                self.peers.remove(&ip);
                None
            }
            None => None,
        }
    }

    /// Counts a failure; reaching the limit starts the lockout.
    pub fn record_failure(&mut self, ip: IpAddr, now: Instant, limits: &AuthLimits) {
        if self.peers.len() >= MAX_PEERS && !self.peers.contains_key(&ip) {
            self.prune(now, limits.window);
            if self.peers.len() >= MAX_PEERS {
                let oldest = self
                    .peers
                    .iter()
                    .min_by_key(|(_, p)| p.last())
                    .map(|(ip, _)| *ip);
                if let Some(o) = oldest {
                    self.peers.remove(&o);
                }
            }
        }
        let p = self.peers.entry(ip).or_default();
        while p
            .failures
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= limits.window)
        {
            p.failures.pop_front();
        }
        p.failures.push_back(now);
        while p.failures.len() > limits.max_attempts {
            p.failures.pop_front();
        }
        if p.failures.len() >= limits.max_attempts {
            p.locked_until = Some(now + limits.lockout);
        }
    }

    /// Forgets peers whose failures have left the window and whose lockout is over.
    pub fn prune(&mut self, now: Instant, window: Duration) {
        self.peers.retain(|_, p| {
            p.locked_until.is_some_and(|t| now < t)
                || p.failures
                    .back()
                    .is_some_and(|t| now.saturating_duration_since(*t) < window)
        });
    }

    pub fn tracked(&self) -> usize {
        self.peers.len()
    }
}

/// One limiter per [`Scope`].
#[derive(Debug, Default)]
pub struct Limiters {
    gateway: FailureLimiter,
    hooks: FailureLimiter,
    warned_untrusted: Option<Instant>,
}

/// How often the warning about forwarding headers from an untrusted peer is repeated.
const WARN_EVERY: Duration = Duration::from_secs(600);

impl Limiters {
    /// Whether to log (again) that forwarding headers came from a peer not trusted as a proxy.
    pub fn warn_untrusted(&mut self, now: Instant) -> bool {
        let due = self
            .warned_untrusted
            .is_none_or(|t| now.saturating_duration_since(t) >= WARN_EVERY);
        if due {
            self.warned_untrusted = Some(now);
        }
        due
    }

    /// A failed authentication of `client` for `scope`: `Some(retry_after)` when it must be
    /// refused as rate-limited (429), `None` for a plain 401. `counted` is false for missing
    /// credentials. A local client is exempt unless the config says otherwise.
    pub fn failure(
        &mut self,
        scope: Scope,
        client: &Client,
        counted: bool,
        cfg: &RateLimit,
        now: Instant,
    ) -> Option<Duration> {
        if client.local && cfg.exempt_loopback {
            return None;
        }
        let (bucket, limits) = match scope {
            Scope::Gateway => (&mut self.gateway, cfg.gateway),
            Scope::Hooks => (&mut self.hooks, HOOK_LIMITS),
        };
        if let Some(wait) = bucket.locked(client.ip, now) {
            return Some(wait.max(Duration::from_millis(1)));
        }
        if counted {
            bucket.record_failure(client.ip, now, &limits);
        }
        None
    }

    pub fn prune(&mut self, now: Instant, cfg: &RateLimit) {
        self.gateway.prune(now, cfg.gateway.window);
        self.hooks.prune(now, HOOK_LIMITS.window);
    }

    /// Clients tracked in either bucket.
    pub fn tracked(&self) -> usize {
        self.gateway.tracked() + self.hooks.tracked()
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
        assert_eq!(
            verify(&p, Presented::Nothing),
            Err(Failure::PasswordMissing)
        );
        // The dashboard copies its secret into both fields; either one matching passes.
        let both = |t, p| Presented::from_connect(Some(t), Some(p));
        assert_eq!(verify(&a, both("t0k", "x")), Ok(()));
        assert_eq!(verify(&p, both("x", "pw")), Ok(()));
        assert_eq!(verify(&p, both("pw", "pw")), Ok(()));
        assert_eq!(verify(&a, both("x", "t0k")), Err(Failure::TokenMismatch));
        assert_eq!(verify(&p, both("x", "y")), Err(Failure::PasswordMismatch));
        for blank in [Some(""), Some("  "), None] {
            assert!(matches!(
                Presented::from_connect(blank, blank),
                Presented::Nothing
            ));
        }
        assert!(!Failure::Missing.guessed() && !Failure::PasswordMissing.guessed());
        assert!(Failure::TokenMismatch.guessed());
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn remote(s: &str) -> Client {
        Client {
            ip: ip(s),
            local: false,
            untrusted_forwarding: false,
        }
    }

    #[test]
    fn a_client_is_locked_out_after_its_limit_and_lets_go_after_the_lockout() {
        let cfg = RateLimit::default();
        let mut l = Limiters::default();
        let c = remote("203.0.113.9");
        let t0 = Instant::now();
        for i in 0..cfg.gateway.max_attempts {
            let at = t0 + Duration::from_millis(i as u64);
            assert_eq!(l.failure(Scope::Gateway, &c, true, &cfg, at), None, "{i}");
        }
        let wait = l
            .failure(Scope::Gateway, &c, true, &cfg, t0 + Duration::from_secs(1))
            .unwrap();
        assert!(wait > Duration::from_secs(290) && wait <= cfg.gateway.lockout);
        // Other clients and the other scope are untouched.
        assert_eq!(
            l.failure(Scope::Gateway, &remote("203.0.113.10"), true, &cfg, t0),
            None
        );
        assert_eq!(l.failure(Scope::Hooks, &c, true, &cfg, t0), None);
        // After the lockout the client starts afresh.
        let later = t0 + cfg.gateway.lockout + Duration::from_secs(1);
        assert_eq!(l.failure(Scope::Gateway, &c, true, &cfg, later), None);
        l.prune(later + cfg.gateway.window, &cfg);
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn failures_spread_wider_than_the_window_never_lock() {
        let cfg = RateLimit::default();
        let mut l = Limiters::default();
        let c = remote("203.0.113.9");
        let t0 = Instant::now();
        for i in 0..100u64 {
            let at = t0 + Duration::from_secs(7 * i);
            assert_eq!(l.failure(Scope::Gateway, &c, true, &cfg, at), None, "{i}");
        }
    }

    #[test]
    fn local_clients_are_exempt_unless_configured_and_missing_secrets_do_not_count() {
        let mut cfg = RateLimit::default();
        let mut l = Limiters::default();
        let local = Client {
            ip: ip("127.0.0.1"),
            local: true,
            untrusted_forwarding: false,
        };
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(l.failure(Scope::Gateway, &local, true, &cfg, t0), None);
        }
        assert_eq!(l.tracked(), 0);
        cfg.exempt_loopback = false;
        let stranger = remote("198.51.100.1");
        for _ in 0..100 {
            assert_eq!(l.failure(Scope::Hooks, &stranger, false, &cfg, t0), None);
        }
        for _ in 0..HOOK_LIMITS.max_attempts {
            assert_eq!(l.failure(Scope::Hooks, &local, true, &cfg, t0), None);
        }
        assert!(l.failure(Scope::Hooks, &local, true, &cfg, t0).is_some());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxies: Vec<IpNet> = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        let fwd = |xff: Option<&str>, proxied: bool| Forwarding {
            x_forwarded_for: xff.map(String::from),
            proxied,
        };
        let xff = |chain: &str| fwd(Some(chain), true);
        // Not a trusted proxy: the peer, whatever it claims.
        let c = client(ip("192.0.2.7"), &xff("203.0.113.5"), &proxies);
        assert_eq!(
            (c.ip, c.local, c.untrusted_forwarding),
            (ip("192.0.2.7"), false, true)
        );
        // A loopback peer with forwarding headers is not local.
        let c = client(ip("127.0.0.2"), &xff("203.0.113.5"), &proxies);
        assert_eq!((c.ip, c.local), (ip("127.0.0.2"), false));
        let c = client(ip("127.0.0.2"), &fwd(None, false), &proxies);
        assert!(c.local);
        // Trusted: the right-most hop that is not a trusted proxy.
        let c = client(ip("127.0.0.1"), &xff("203.0.113.5"), &proxies);
        assert_eq!((c.ip, c.local), (ip("203.0.113.5"), false));
        let c = client(
            ip("127.0.0.1"),
            &xff("198.51.100.66, 203.0.113.5, 10.1.2.3"),
            &proxies,
        );
        assert_eq!(c.ip, ip("203.0.113.5"), "a spoofed left part is ignored");
        let c = client(ip("127.0.0.1"), &xff("[2001:db8::1]"), &proxies);
        assert_eq!(c.ip, ip("2001:db8::1"));
        let c = client(ip("127.0.0.1"), &xff("garbage, 10.9.9.9"), &proxies);
        assert_eq!(
            (c.ip, c.local),
            (ip("10.9.9.9"), false),
            "stops at a bad hop"
        );
        let c = client(ip("127.0.0.1"), &fwd(None, false), &proxies);
        assert_eq!(
            (c.ip, c.local),
            (ip("127.0.0.1"), true),
            "the proxy's own probes"
        );
        let c = client(ip("::ffff:127.0.0.1"), &xff("203.0.113.5"), &proxies);
        assert_eq!(
            c.ip,
            ip("203.0.113.5"),
            "an IPv4-mapped peer is its IPv4 address"
        );
    }

    #[test]
    fn the_limiter_stays_bounded() {
        let cfg = RateLimit::default();
        let mut l = Limiters::default();
        let t0 = Instant::now();
        for i in 0..(MAX_PEERS as u32 + 500) {
            let c = remote(&std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string());
            l.failure(Scope::Gateway, &c, true, &cfg, t0);
        }
        assert!(l.tracked() <= MAX_PEERS);
    }
}
