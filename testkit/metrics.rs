//! keel's `/metrics` text (Prometheus).

/// The value of one series, `name` or `name{labels}` exactly as keel writes it, e.g.
/// `keel_jobs_in_flight{pool="cpu"}`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}
