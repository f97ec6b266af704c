//! What `/proc/self` says about this process: resident memory, threads, open descriptors.
//! Each reader is one small read of a pseudo-file; a value that cannot be read is 0 or `None`,
//! never an error (a diagnostic must not fail the thing it diagnoses).

/// Resident set size from `/proc/self/status` (`VmRSS`, in kB).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Threads of this process.
pub fn thread_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/task").map(|d| d.count()).ok()
}

/// Open file descriptors of this process.
pub fn fd_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_is_readable() {
        assert!(super::rss_bytes() > 0);
        assert!(super::thread_count().is_some_and(|n| n >= 1));
        assert!(super::fd_count().is_some_and(|n| n >= 3));
    }
}
