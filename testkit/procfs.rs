//! What `/proc` says about a process (Linux): the figures of its `status`, its descriptors.

use std::fs;

/// A figure of `/proc/<pid>/status`: `VmRSS`, `VmHWM` (the peak) in KiB, `Threads`, ...
pub fn status(pid: u32, field: &str) -> Result<u64, String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no {field} in /proc/{pid}/status"))
}

/// How many descriptors a process has open.
pub fn fd_count(pid: u32) -> std::io::Result<usize> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}
