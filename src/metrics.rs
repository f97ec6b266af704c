//! Counters, gauges and the reactor-lag histogram, all lock-free so the reactor, the workers
//! and the watchdog can update them without waiting on each other; rendered as Prometheus text
//! format 0.0.4 by `runtime::Shared::prometheus`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the lag buckets, in microseconds (the last bucket is +Inf).
pub const LAG_BOUNDS_US: [u64; 15] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000,
];
pub const LAG_BUCKETS: usize = LAG_BOUNDS_US.len() + 1;

/// How long each reactor iteration kept new events waiting (its busy time).
#[derive(Default)]
pub struct LagHistogram {
    buckets: [AtomicU64; LAG_BUCKETS],
    sum_us: AtomicU64,
    max_us: AtomicU64,
    /// Maximum since the watchdog last took it.
    recent_max_us: AtomicU64,
}

impl LagHistogram {
    pub fn record(&self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        let i = LAG_BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LAG_BOUNDS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
        self.recent_max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Per-bucket counts (not cumulative) since start.
    pub fn counts(&self) -> [u64; LAG_BUCKETS] {
        std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed))
    }

    /// The largest sample since the previous call.
    pub fn take_recent_max(&self) -> Duration {
        Duration::from_micros(self.recent_max_us.swap(0, Ordering::Relaxed))
    }

    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max_us.load(Ordering::Relaxed))
    }

    /// The sum of every sample since start: the reactor's busy time.
    pub fn sum(&self) -> Duration {
        Duration::from_micros(self.sum_us.load(Ordering::Relaxed))
    }

    fn render(&self, out: &mut String) {
        let name = "keel_reactor_lag_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time each reactor iteration kept new events waiting."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        let counts = self.counts();
        let mut cum = 0;
        for (i, c) in counts.iter().enumerate() {
            cum += c;
            let le = match LAG_BOUNDS_US.get(i) {
                Some(b) => format!("{}", *b as f64 / 1e6),
                None => "+Inf".into(),
            };
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cum}");
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cum}");
    }
}

/// The quantile `q` of bucket counts, as the upper bound of the bucket it falls in; `None`
/// with no samples. The +Inf bucket reports `overflow` (the largest sample seen).
pub fn quantile(counts: &[u64; LAG_BUCKETS], q: f64, overflow: Duration) -> Option<Duration> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut cum = 0;
    for (i, c) in counts.iter().enumerate() {
        cum += c;
        if cum >= rank {
            return Some(match LAG_BOUNDS_US.get(i) {
                Some(b) => Duration::from_micros(*b),
                None => overflow,
            });
        }
    }
    Some(overflow)
}

/// A monotonically increasing counter.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Every metric keel keeps.
#[derive(Default)]
pub struct Metrics {
    pub lag: LagHistogram,
    pub jobs_ok: Counter,
    pub jobs_failed: Counter,
    pub jobs_deadline_exceeded: Counter,
    pub jobs_cancelled: Counter,
    pub jobs_panicked: Counter,
    pub jobs_dropped_expired: Counter,
    pub rejected_queue_full: Counter,
    pub rejected_draining: Counter,
    pub rejected_pressure: Counter,
    pub connections_accepted: Counter,
    pub connections_refused: Counter,
    /// Idle unauthenticated connections closed to make room for new ones at the limit.
    pub connections_evicted: Counter,
    pub http_requests: Counter,
    pub http_errors_4xx: Counter,
    pub ws_requests: Counter,
    pub auth_failures: Counter,
    /// Gateway authentications refused for presenting no secret (not failures: nothing was
    /// guessed, nothing counts toward a lockout).
    pub auth_missing: Counter,
    pub origin_refused: Counter,
    pub auth_rate_limited: Counter,
    pub handshake_timeouts: Counter,
    /// Open WebSockets closed for sending nothing (not even a pong) for two tick intervals.
    pub ping_timeouts: Counter,
    pub slow_consumers_closed: Counter,
    /// Drop-if-slow events skipped for a client with unread data.
    pub events_dropped_slow: Counter,
    /// Non-terminal session mirrors not sent because pressure was elevated.
    pub events_suppressed_pressure: Counter,
    /// Connection handlers that panicked (the connection was dropped, the reactor lived).
    pub reactor_panics: Counter,
    pub conns_http: Gauge,
    pub conns_ws_handshake: Gauge,
    pub conns_ws_open: Gauge,
    pub rss_bytes: Gauge,
    /// Watchdog samples taken (one per tick, counted right after RSS is read).
    pub watchdog_ticks: Counter,
    /// Oldest queued job's age in ms, per pool (cpu, io) and lane; published by the watchdog.
    pub oldest_queued_ms: [[Gauge; 3]; 2],
}

/// Appends one metric family with a single unlabelled sample.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

impl Metrics {
    /// The metrics this struct owns; `runtime` adds queue, pressure and lifecycle families.
    pub fn render(&self, out: &mut String) {
        self.lag.render(out);
        let _ = writeln!(out, "# HELP keel_jobs_total Jobs finished, by outcome.");
        let _ = writeln!(out, "# TYPE keel_jobs_total counter");
        for (outcome, c) in [
            ("ok", &self.jobs_ok),
            ("error", &self.jobs_failed),
            ("deadline_exceeded", &self.jobs_deadline_exceeded),
            ("cancelled", &self.jobs_cancelled),
            ("panicked", &self.jobs_panicked),
            ("dropped_expired", &self.jobs_dropped_expired),
        ] {
            let _ = writeln!(out, "keel_jobs_total{{outcome=\"{outcome}\"}} {}", c.get());
        }
        let counters: [(&str, &str, &Counter); 5] = [
            (
                "keel_jobs_deadline_exceeded_total",
                "Jobs that passed their deadline (queued or running).",
                &self.jobs_deadline_exceeded,
            ),
            (
                "keel_jobs_cancelled_total",
                "Jobs cancelled (drain, stall or request).",
                &self.jobs_cancelled,
            ),
            (
                "keel_jobs_panicked_total",
                "Jobs whose code panicked; each became an error reply.",
                &self.jobs_panicked,
            ),
            (
                "keel_connections_accepted_total",
                "TCP connections accepted.",
                &self.connections_accepted,
            ),
            (
                "keel_watchdog_ticks_total",
                "Watchdog ticks (each samples RSS, lag and queue ages once).",
                &self.watchdog_ticks,
            ),
        ];
        for (name, help, c) in counters {
            family(out, name, "counter", help, c.get());
        }
        let _ = writeln!(
            out,
            "# HELP keel_jobs_rejected_total Jobs refused at admission, by reason."
        );
        let _ = writeln!(out, "# TYPE keel_jobs_rejected_total counter");
        for (reason, c) in [
            ("queue_full", &self.rejected_queue_full),
            ("draining", &self.rejected_draining),
            ("pressure", &self.rejected_pressure),
        ] {
            let _ = writeln!(
                out,
                "keel_jobs_rejected_total{{reason=\"{reason}\"}} {}",
                c.get()
            );
        }
        let simple: [(&str, &str, &Counter); 15] = [
            (
                "keel_reactor_handler_panics_total",
                "Connections dropped after a panic in their handler.",
                &self.reactor_panics,
            ),
            (
                "keel_connections_refused_total",
                "Connections closed at accept (limit reached).",
                &self.connections_refused,
            ),
            (
                "keel_connections_evicted_total",
                "Idle connections without a request closed to make room at the limit.",
                &self.connections_evicted,
            ),
            (
                "keel_http_requests_total",
                "HTTP requests parsed.",
                &self.http_requests,
            ),
            (
                "keel_http_client_errors_total",
                "HTTP requests answered 4xx.",
                &self.http_errors_4xx,
            ),
            (
                "keel_ws_requests_total",
                "WebSocket requests after connect.",
                &self.ws_requests,
            ),
            (
                "keel_auth_failures_total",
                "Failed authentications: a wrong secret (HTTP and WebSocket), a missing hooks token.",
                &self.auth_failures,
            ),
            (
                "keel_auth_missing_total",
                "Gateway authentications refused for presenting no secret (not counted toward a lockout).",
                &self.auth_missing,
            ),
            (
                "keel_ws_origin_refused_total",
                "WebSocket connects refused for a browser Origin not allowed (gateway.controlUi.allowedOrigins).",
                &self.origin_refused,
            ),
            (
                "keel_auth_rate_limited_total",
                "Attempts refused by the per-IP failure limit.",
                &self.auth_rate_limited,
            ),
            (
                "keel_ws_handshake_timeouts_total",
                "WebSockets closed for not sending connect in time.",
                &self.handshake_timeouts,
            ),
            (
                "keel_ws_ping_timeouts_total",
                "WebSockets closed for not answering pings (dead peers).",
                &self.ping_timeouts,
            ),
            (
                "keel_slow_consumers_closed_total",
                "Clients closed because their write buffer was full.",
                &self.slow_consumers_closed,
            ),
            (
                "keel_events_dropped_slow_total",
                "Drop-if-slow events skipped for clients with unread data.",
                &self.events_dropped_slow,
            ),
            (
                "keel_events_suppressed_pressure_total",
                "Non-terminal session mirrors not sent under elevated pressure.",
                &self.events_suppressed_pressure,
            ),
        ];
        for (name, help, c) in simple {
            family(out, name, "counter", help, c.get());
        }
        let _ = writeln!(out, "# HELP keel_connections Open connections, by kind.");
        let _ = writeln!(out, "# TYPE keel_connections gauge");
        for (kind, g) in [
            ("http", &self.conns_http),
            ("ws_handshake", &self.conns_ws_handshake),
            ("ws", &self.conns_ws_open),
        ] {
            let _ = writeln!(out, "keel_connections{{kind=\"{kind}\"}} {}", g.get());
        }
        family(
            out,
            "keel_resident_memory_bytes",
            "gauge",
            "Resident set size.",
            self.rss_bytes.get(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_from_buckets() {
        let h = LagHistogram::default();
        for _ in 0..98 {
            h.record(Duration::from_micros(80));
        }
        h.record(Duration::from_millis(3));
        h.record(Duration::from_secs(9));
        let c = h.counts();
        assert_eq!(quantile(&c, 0.5, h.max()), Some(Duration::from_micros(100)));
        assert_eq!(quantile(&c, 0.99, h.max()), Some(Duration::from_millis(5)));
        assert_eq!(quantile(&c, 1.0, h.max()), Some(Duration::from_secs(9)));
        assert_eq!(quantile(&[0; LAG_BUCKETS], 0.99, Duration::ZERO), None);
        assert_eq!(h.take_recent_max(), Duration::from_secs(9));
        assert_eq!(h.take_recent_max(), Duration::ZERO);
    }

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let h = LagHistogram::default();
        h.record(Duration::from_micros(50));
        h.record(Duration::from_micros(300));
        let mut s = String::new();
        h.render(&mut s);
        assert!(s.contains("keel_reactor_lag_seconds_bucket{le=\"0.0001\"} 1\n"));
        assert!(s.contains("keel_reactor_lag_seconds_bucket{le=\"0.0005\"} 2\n"));
        assert!(s.contains("keel_reactor_lag_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(s.contains("keel_reactor_lag_seconds_count 2\n"));
    }
}
